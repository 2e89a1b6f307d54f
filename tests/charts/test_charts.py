"""The Helm charts, rendered by the real helm (v4) and validated strictly.

helm is looked up at .tools/bin/helm (scripts/install-helm.sh) and on PATH; without it
these tests skip, unless FEDSHIELD_REQUIRE_TOOLS=1 makes them fail.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from support.charts import (
    CASE_IDS,
    CASES,
    EXAMPLE,
    K8S_VERSION,
    MONITORING,
    OPERATOR,
    OWNER,
    ROOT,
    SILO,
    SILO_CASES,
    SILO_IDS,
    matches,
    one,
    render,
    run_helm,
)
from support.crd_schema import to_jsonschema

from fedshield.api.crd import membership_crd
from fedshield.api.membership import FederationMembershipSpec
from fedshield.api.models import FederatedFinetuneSpec
from fedshield.api.models import SiloPlacement as SiloSpec
from fedshield.api.unlearning import FederatedUnlearningSpec
from fedshield.cli import main as fedshield_main
from fedshield.operator import consent
from fedshield.operator import unlearning as fu
from fedshield.operator.manifests import AGGREGATOR_PORT, aggregator_deployment, labels, silo_job


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    """A real CKKS key set, made by the CLI the docs tell organisations to run."""
    out = tmp_path_factory.mktemp("keys")
    assert fedshield_main(["keys", "create", "--out", str(out / "keys")]) == 0
    return out / "keys" / "secret.ckks"


@pytest.mark.parametrize(("chart", "args"), CASES, ids=CASE_IDS)
def test_lint_and_every_manifest_validates_strictly(chart, args):
    lint = run_helm("lint", "--strict", str(chart), *args)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = render(chart, *args)
    assert docs
    for doc in docs:
        if doc["apiVersion"] == MONITORING:
            check_monitor(doc)
        elif doc["apiVersion"] == "fedshield.io/v1alpha1":
            check_membership(doc)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def check_membership(doc: dict) -> None:
    """kubernetes-validate does not know our kinds: the generated CRD's schema, and the pydantic model."""
    assert doc["kind"] == "FederationMembership"
    schema = to_jsonschema(copy.deepcopy(membership_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))
    schema["properties"]["metadata"] = {"type": "object"}
    errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]
    assert not errors, errors
    FederationMembershipSpec.model_validate(doc["spec"])


def check_monitor(doc: dict) -> None:
    """kubernetes-validate does not know prometheus-operator kinds: the fields they need."""
    assert doc["kind"] in ("ServiceMonitor", "PodMonitor")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]) and doc["metadata"]["namespace"]
    spec = doc["spec"]
    assert spec["selector"].get("matchLabels") or spec["selector"].get("matchExpressions")
    endpoints = spec["endpoints" if doc["kind"] == "ServiceMonitor" else "podMetricsEndpoints"]
    assert endpoints and set(spec) <= {"selector", "namespaceSelector", "endpoints", "podMetricsEndpoints", "jobLabel"}
    for endpoint in endpoints:
        assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
        assert re.fullmatch(r"[0-9]+(ms|s|m|h)", endpoint["interval"]) and re.fullmatch(r"[0-9]+(ms|s|m|h)", endpoint["scrapeTimeout"])
    selector = spec.get("namespaceSelector", {})
    assert selector == {"any": True} or (set(selector) == {"matchNames"} and selector["matchNames"])


def test_monitors_select_what_the_operator_and_chart_run():
    docs = render(OPERATOR, "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.podMonitor.enabled=true",
                  namespace="fedshield", release="fs")
    service, deployment = one(docs, "Service"), one(docs, "Deployment")
    pod = deployment["spec"]["template"]
    assert matches({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] == "metrics" and ports["metrics"] == 9100 != ports["health"]
    assert matches(one(docs, "ServiceMonitor")["spec"]["selector"], service["metadata"]["labels"])
    # The PodMonitor selects the aggregator and silo pods the operator builds, not the operator.
    pod_monitor = one(docs, "PodMonitor")["spec"]
    spec = FederatedFinetuneSpec.model_validate(EXAMPLE["spec"])
    for built in (aggregator_deployment(OWNER, spec)["spec"]["template"], silo_job(OWNER, spec, spec.silos[0])["spec"]["template"]):
        assert matches(pod_monitor["selector"], built["metadata"]["labels"])
        assert "metrics" in {p["name"] for p in built["spec"]["containers"][0]["ports"]}
    assert not matches(pod_monitor["selector"], labels(OWNER, "plan"))
    assert not matches(pod_monitor["selector"], pod["metadata"]["labels"])


def test_defaults_create_no_monitors_and_ship_the_dashboard():
    docs = render(OPERATOR, namespace="fedshield")
    assert not [d for d in docs if d["apiVersion"] == MONITORING]
    dashboard = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard"))
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (OPERATOR / "dashboards" / "fedshield.json").read_text()
    assert dashboard["data"]["fedshield.json"] == shipped.rstrip("\n")
    assert json.loads(dashboard["data"]["fedshield.json"])["uid"] == "fedshield"


def test_dashboard_goes_to_the_grafana_namespace():
    docs = render(OPERATOR, "-f", str(OPERATOR / "ci" / "monitoring-values.yaml"), namespace="fedshield")
    dashboard = next(d for d in docs if d["kind"] == "ConfigMap")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "FedShield"}


def test_default_images_are_the_dockerfile_targets_at_app_version():
    app_version = yaml.safe_load((OPERATOR / "Chart.yaml").read_text())["appVersion"]
    assert yaml.safe_load((SILO / "Chart.yaml").read_text())["appVersion"] == app_version
    assert FederatedFinetuneSpec.model_fields["image"].default == f"fedshield/fedshield:{app_version}"
    operator = one(render(OPERATOR), "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    entry = silo_entry(render(SILO))
    assert operator == f"fedshield/fedshield:{app_version}"  # slim; no registry host
    assert entry.image == f"fedshield/fedshield:{app_version}-cuda"


def with_entry(entry: SiloSpec) -> dict:
    """The example's spec with ``entry`` and a partner as its silos: mutual TLS when the entry has a certificate, else insecure."""
    aggregator = dict(EXAMPLE["spec"]["aggregator"])
    if entry.tls is None:
        del aggregator["tls"]
    return dict(EXAMPLE["spec"], silos=with_partner(entry.model_dump(by_alias=True, exclude_none=True)),
                aggregator=aggregator, insecure=entry.tls is None)


def silo_entry(docs: list[dict]) -> SiloSpec:
    configmap = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-entry"))
    [entry] = yaml.safe_load(configmap["data"]["silo.yaml"])
    return SiloSpec.model_validate(entry)


def test_secret_holds_the_key_file_byte_for_byte(key_file):
    docs = render(SILO, "--set-file", f"ckks.secretKey={key_file}")
    secret = one(docs, "Secret")
    assert base64.b64decode(secret["data"]["secret.ckks"], validate=True) == key_file.read_bytes()
    assert secret["metadata"]["name"] == silo_entry(docs).key_secret == "fedshield-keys"


def test_without_a_key_no_secret_is_rendered_and_notes_say_how():
    assert not [d for d in render(SILO) if d["kind"] == "Secret"]
    notes = run_helm("install", "h", str(SILO), "--dry-run=client", "--namespace", "org-a")
    assert notes.returncode == 0, notes.stderr
    assert "create secret generic fedshield-keys --from-file=secret.ckks=" in notes.stdout


def with_partner(entry: dict) -> list[dict]:
    """The entry and a second silo like it: a federation has at least 2 silos."""
    return [entry, dict(entry, name="partner", namespace="partner-ns")]


@pytest.mark.parametrize("args", SILO_CASES, ids=SILO_IDS)
def test_silo_entry_drives_the_operator(args, key_file):
    """The chart's entry, put in a FederatedFinetune, gives a silo Job that mounts what the chart made."""
    docs = render(SILO, *args, "--set-file", f"ckks.secretKey={key_file}")
    values = yaml.safe_load(Path(args[1]).read_text()) if args else {}
    entry = silo_entry(docs)
    spec = FederatedFinetuneSpec.model_validate(with_entry(entry))
    job = silo_job(OWNER, spec, spec.silos[0])
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert job["metadata"]["namespace"] == "org-hospital-a" == entry.namespace

    secret_name = values.get("ckks", {}).get("existingSecret") or one(docs, "Secret")["metadata"]["name"]
    assert volumes["keys"]["secret"]["secretName"] == secret_name and volumes["keys"]["secret"]["items"][0]["key"] == "secret.ckks"
    claims = [d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == (values.get("dataset", {}).get("existingClaim") or claims[0])
    accounts = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"]
    assert pod.get("serviceAccountName") == (accounts[0] if accounts else None)

    gpu = {"resource": "nvidia.com/gpu", "count": 1, **values.get("gpu", {})}
    assert pod["containers"][0]["resources"]["limits"][gpu["resource"]] == str(gpu["count"])
    for key in ("nodeSelector", "tolerations", "runtimeClassName", "priorityClassName"):
        assert pod.get(key) == (gpu.get(key) or None)

    policy = one(docs, "NetworkPolicy")
    assert matches(policy["spec"]["podSelector"], job["spec"]["template"]["metadata"]["labels"])
    # Unlearning and apply pods hold the same key and data: the same policy covers them.
    unlearning = FederatedUnlearningSpec.model_validate({"finetune": OWNER.name, "silo": entry.name, "forget": {"users": ["u"]},
                                                         "requestedBy": "dpo"})
    target = fu.Target("forget-1", OWNER.namespace, "uid")
    for child in fu.unlearning_children(target, OWNER, spec, unlearning):
        if child["kind"] == "Job":
            assert matches(policy["spec"]["podSelector"], child["spec"]["template"]["metadata"]["labels"])
    apply = fu.apply_job(target, OWNER, spec, spec.silos[0])
    assert matches(policy["spec"]["podSelector"], apply["spec"]["template"]["metadata"]["labels"])
    assert not matches(policy["spec"]["podSelector"], {**job["spec"]["template"]["metadata"]["labels"], "fedshield.io/silo": "other"})

    # With consent, the chart's membership admits exactly its own entry, and nothing more.
    memberships = [d for d in docs if d["kind"] == "FederationMembership"]
    if values.get("membership", {}).get("federations"):
        [membership] = memberships
        federations = [(f["namespace"], f["name"]) for f in values["membership"]["federations"]]
        silo = spec.silos[0]
        assert consent.check_silo(federations[0], spec, silo, memberships) is None
        assert "no FederationMembership" in consent.check_silo(("elsewhere", "x"), spec, silo, memberships)
        for change in ({"image": "evil/miner:1"}, {"key_secret": "payments-db"}, {"gpus": silo.gpus + 1},
                       {"service_account_name": "org-admin"}, {"priority_class_name": "system-node-critical"}):
            assert consent.check_silo(federations[0], spec, silo.model_copy(update=change), memberships), change
    else:
        assert memberships == []


def test_network_policy_allows_only_the_aggregator_and_dns():
    docs = render(SILO)
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"] and policy["ingress"] == []
    to_aggregator, to_dns = policy["egress"]
    assert to_aggregator["ports"] == [{"protocol": "TCP", "port": AGGREGATOR_PORT}]
    [peer] = to_aggregator["to"]
    aggregator_pod = aggregator_deployment(OWNER, FederatedFinetuneSpec.model_validate(EXAMPLE["spec"]))["spec"]["template"]
    assert matches(peer["podSelector"], aggregator_pod["metadata"]["labels"])
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": OWNER.namespace}}
    assert {p["port"] for p in to_dns["ports"]} == {53}


def test_network_policy_with_cidr_and_metrics_ingress():
    docs = render(SILO, "-f", str(SILO / "ci" / "cidr-values.yaml"), "--set", "networkPolicy.metrics.enabled=true")
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["egress"][0] == {"to": [{"ipBlock": {"cidr": "203.0.113.10/32"}}], "ports": [{"protocol": "TCP", "port": 443}]}
    [rule] = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "metrics"}]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


# Values that break a schema: (chart, --set arguments, the value path helm must name).
BAD_VALUES = [
    (OPERATOR, ["--set", "bogus=1"], "additional properties 'bogus' not allowed"),
    (OPERATOR, ["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    (OPERATOR, ["--set", "metrics.port=80"], "/metrics/port"),
    (OPERATOR, ["--set", "metrics.serviceMonitor.interval=often"], "/metrics/serviceMonitor/interval"),
    (OPERATOR, ["--set", "watchNamespaces[0]=Not_A_Namespace"], "/watchNamespaces/0"),
    (OPERATOR, ["--set", "resources.requests.cpu=lots"], "/resources/requests/cpu"),
    (OPERATOR, ["--set-string", "metrics.serviceMonitor.enabled=yes"], "/metrics/serviceMonitor/enabled"),
    (SILO, ["--set", "gpu.count=17"], "/gpu/count"),
    (SILO, ["--set", "gpu.resource=gpu"], "/gpu/resource"),
    (SILO, ["--set", "gpu.tolerations[0].operator=Maybe"], "/gpu/tolerations/0/operator"),
    (SILO, ["--set", "silo.name=Hospital_A"], "/silo/name"),
    (SILO, ["--set", "dataset.accessModes[0]=ReadWriteSometimes"], "/dataset/accessModes/0"),
    (SILO, ["--set", "networkPolicy.aggregator.cidr=10.0.0.1"], "/networkPolicy/aggregator/cidr"),
    (SILO, ["--set", "networkPolicy.aggregator.port=70000"], "/networkPolicy/aggregator/port"),
    (SILO, ["--set", "ckks.secretKeyFile=x"], "additional properties 'secretKeyFile' not allowed"),
    (SILO, ["--set", "membership.federations[0].namespace=Bad_NS", "--set", "membership.federations[0].name=x"],
     "/membership/federations/0/namespace"),
    (SILO, ["--set", "membership.extraSecrets[0]=Not_A_Name"], "/membership/extraSecrets/0"),
    (SILO, ["--set", "operator.namespace=-bad"], "/operator/namespace"),
    (OPERATOR, ["--set", "aggregatorNamespaces[0]=Not_A_Namespace"], "/aggregatorNamespaces/0"),
    (OPERATOR, ["--set", "aggregatorClient.observerUri=http://x"], "/aggregatorClient/observerUri"),
]


@pytest.mark.parametrize(("chart", "args", "path"), BAD_VALUES, ids=[" ".join(a) for _, a, _ in BAD_VALUES])
def test_schema_rejects_bad_values_clearly(chart, args, path):
    result = run_helm("template", "x", str(chart), *args)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr and path in result.stderr, result.stderr


def test_operator_metrics_port_cannot_be_the_health_port():
    result = run_helm("template", "x", str(OPERATOR), "--set", "metrics.port=8080")
    assert result.returncode != 0 and "8080 is the operator's health port" in result.stderr


def leaf_paths(node, prefix=""):
    """Dotted paths of a values tree; empty maps and lists are leaves."""
    if isinstance(node, dict) and node and not prefix.endswith(("podLabels", "nodeSelector")):
        for key, value in node.items():
            yield from leaf_paths(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def schema_at(schema: dict, path: str) -> dict:
    node, definitions = schema, schema.get("definitions", {})
    for part in path.split("."):
        assert node.get("additionalProperties") is False, f"{path}: schema object above {part} is not strict"
        node = node["properties"][part]
        while "$ref" in node:
            node = {**definitions[node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


@pytest.mark.parametrize("chart", [OPERATOR, SILO], ids=lambda c: c.name)
def test_every_value_is_in_the_schema_and_the_readme_table(chart):
    values = yaml.safe_load((chart / "values.yaml").read_text())
    schema = json.loads((chart / "values.schema.json").read_text())
    table = {m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", (chart / "README.md").read_text(), re.M)}
    paths = list(leaf_paths(values))
    assert len(paths) > 10
    for path in paths:
        assert path in table, f"{chart.name}: {path} missing from README.md's table"
        node = schema_at(schema, path)
        assert "type" in node or "enum" in node, f"{chart.name}: {path} has no type in values.schema.json"
    assert table == set(paths), f"README rows without a value: {table - set(paths)}"


def test_silo_pod_settings_reach_the_job_without_helm():
    """The SiloSpec fields the silo chart's entry sets (no helm needed)."""
    raw = dict(EXAMPLE["spec"]["silos"][0], gpus=2, gpuResource="amd.com/gpu", runtimeClassName="rocm",
               priorityClassName="fedshield-training", serviceAccountName="hospital-a-silo")
    spec = FederatedFinetuneSpec.model_validate(dict(EXAMPLE["spec"], silos=with_partner(raw)))
    job = silo_job(OWNER, spec, spec.silos[0])
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"memory": "16Gi", "amd.com/gpu": "2"}
    assert (pod["runtimeClassName"], pod["priorityClassName"], pod["serviceAccountName"]) == ("rocm", "fedshield-training", "hospital-a-silo")
    assert pod["automountServiceAccountToken"] is False


def dockerfile_stages() -> dict[str, list[str]]:
    """Instructions of each build stage, keyed by its name (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if match := re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.I):
            current = stages.setdefault(match.group(2), [f"FROM {match.group(1)}"])
        elif current is not None and line and not line.startswith("#"):
            current.append(line)
    return stages


def test_dockerfile_targets_are_pinned_and_run_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    assert args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d+\.\d+", args["CUDA_IMAGE"])
    assert args["TORCH_VERSION"] == "2.13.0" and re.fullmatch(r"\d+\.\d+\.\d+", args["DEEPSPEED_VERSION"])
    stages = dockerfile_stages()
    assert set(stages) == {"slim", "cuda"}
    for name, lines in stages.items():
        assert lines[0] == f"FROM ${{{'PYTHON_IMAGE' if name == 'slim' else 'CUDA_IMAGE'}}}"
        installs = " ".join(line for line in lines if "pip install" in line)
        assert '"torch==${TORCH_VERSION}"' in installs and '"deepspeed==${DEEPSPEED_VERSION}"' in installs
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users and users[-1] == "10001:10001"  # the uid the operator's pods run as
        assert lines.index(f"USER {users[-1]}") > max(i for i, line in enumerate(lines) if line.startswith("RUN "))
        assert 'ENTRYPOINT ["fedshield"]' in lines
    assert "--index-url" in " ".join(stages["slim"])  # CPU wheels for slim
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored and "!fedshield/" in ignored  # only the package and its metadata go in


def test_silo_certificate_secret_reaches_the_silo_job(key_file):
    """tls.secretName (a cert-manager Certificate's Secret) becomes the entry's tls: the Job mounts it and speaks https."""
    docs = render(SILO, "--set-file", f"ckks.secretKey={key_file}", "--set", "tls.secretName=hospital-a-client-tls")
    entry = silo_entry(docs)
    assert entry.tls is not None and entry.tls.secret_name == "hospital-a-client-tls"
    spec = FederatedFinetuneSpec.model_validate(dict(
        EXAMPLE["spec"], silos=with_partner(entry.model_dump(by_alias=True, exclude_none=True)),
        aggregator=dict(EXAMPLE["spec"]["aggregator"], tls={"secretName": "aggregator-tls"})))
    job = silo_job(OWNER, spec, spec.silos[0])
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert {v["name"]: v for v in pod["volumes"]}["tls"]["secret"]["secretName"] == "hospital-a-client-tls"
    command = pod["containers"][0]["command"]
    assert command[command.index("--aggregator") + 1].startswith("https://") and "--cert" in command


def test_operator_trusts_a_mounted_ca_bundle_not_a_secret():
    docs = render(OPERATOR, "--set", "aggregatorCA.configMap=fedshield-aggregator-ca")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = {v["name"]: v for v in pod["volumes"]}["aggregator-ca"]
    assert volume["configMap"]["name"] == "fedshield-aggregator-ca" and "secret" not in volume
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["FEDSHIELD_AGGREGATOR_CA"] == "/etc/fedshield/aggregator-ca/ca.crt"
    assert "FEDSHIELD_AGGREGATOR_CERT" not in env  # no client certificate unless one is given


def test_operator_client_certificate_is_mounted_from_its_own_secret_and_names_its_observer_uri():
    docs = render(OPERATOR, "--set", "aggregatorClient.secretName=fs-operator-client-tls", namespace="fedshield", release="fs")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = {v["name"]: v for v in pod["volumes"]}["aggregator-client"]
    assert volume["secret"]["secretName"] == "fs-operator-client-tls"  # mounted by the kubelet, never read through the API
    env = {e["name"]: e.get("value") or e.get("valueFrom") for e in pod["containers"][0]["env"]}
    assert env["FEDSHIELD_AGGREGATOR_CERT"] == "/etc/fedshield/aggregator-client/tls.crt"
    assert env["FEDSHIELD_OBSERVER_URI"] == "spiffe://fedshield.io/ns/fedshield/sa/fs-operator"
    assert env["FEDSHIELD_OPERATOR_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["FEDSHIELD_MONITORING_NAMESPACE"] == "monitoring"
    assert env["FEDSHIELD_AGGREGATOR_IMAGE_PREFIXES"] == "fedshield/fedshield:,fedshield/fedshield@"
