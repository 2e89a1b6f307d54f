"""Manifest builders and status computation: pure functions, strict Kubernetes schemas."""

import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from support.aggregator_status import status_of

from fedshield.api.models import FederatedFinetuneSpec
from fedshield.config import FederationConfig
from fedshield.operator.manifests import (
    KEYS_DIR,
    OWNER_UID_LABEL,
    Owner,
    Site,
    aggregator_deployment,
    aggregator_network_policy,
    aggregator_url,
    desired_children,
    federation_config,
    owned_by,
    silo_job,
    silo_job_name,
)
from fedshield.operator.status import Observed, compute_status

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "examples" / "federatedfinetune.yaml").read_text())
OWNER = Owner("triage-notes", "fedshield", "0b9c7a34-1111-2222-3333-444455556666")
K8S_VERSION = "1.34"


def spec_with(n_silos: int, **overrides) -> FederatedFinetuneSpec:
    raw = dict(EXAMPLE["spec"], **overrides)
    template = EXAMPLE["spec"]["silos"][0]
    raw["silos"] = [dict(template, name=f"org-{i}", namespace=f"org-{i}-ns") for i in range(n_silos)]
    raw["aggregation"] = dict(raw["aggregation"], minSilos=2)
    return FederatedFinetuneSpec.model_validate(raw)


@pytest.mark.parametrize("n_silos", [2, 3, 50])
def test_every_manifest_validates_strictly(n_silos):
    children = desired_children(OWNER, spec_with(n_silos))
    kinds = [c["kind"] for c in children]
    assert kinds.count("Job") == n_silos and kinds.count("Deployment") == 1 and kinds.count("Service") == 1
    assert kinds.count("ConfigMap") == 1 + n_silos  # one plan beside the aggregator, one per silo namespace
    for manifest in children:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_silo_job_runs_in_its_namespace_with_gpu_data_and_secret():
    spec = FederatedFinetuneSpec.model_validate(EXAMPLE["spec"])
    job = silo_job(OWNER, spec, spec.silos[0])
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert job["metadata"]["namespace"] == "org-hospital-a" and "ownerReferences" not in job["metadata"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["keys"]["secret"]["secretName"] == "fedshield-keys"
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "triage-data", "readOnly": True}
    assert aggregator_url(OWNER, tls=True) in container["command"]
    assert container["securityContext"]["readOnlyRootFilesystem"] and container["securityContext"]["runAsNonRoot"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["automountServiceAccountToken"] is False


def test_aggregator_mounts_only_the_public_context():
    spec = FederatedFinetuneSpec.model_validate(EXAMPLE["spec"])
    deployment = next(c for c in desired_children(OWNER, spec) if c["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    secrets = [v["secret"] for v in pod["volumes"] if "secret" in v]
    assert secrets == [{"secretName": "fedshield-public-key", "items": [{"key": "public.ckks", "path": "public.ckks"}]},
                       {"secretName": "triage-notes-aggregator-tls", "defaultMode": 0o400}]  # and its own server certificate
    assert f"{KEYS_DIR}/public.ckks" in pod["containers"][0]["command"]
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert deployment["spec"]["strategy"] == {"type": "Recreate"} and deployment["spec"]["replicas"] == 1


def test_child_names_outside_the_cr_namespace_are_unique_per_cr_and_fit():
    spec = FederatedFinetuneSpec.model_validate(EXAMPLE["spec"])
    twins = [OWNER, Owner(OWNER.name, "team-b", OWNER.uid), Owner(OWNER.name, OWNER.namespace, "another-uid")]
    names = [silo_job(o, spec, spec.silos[0])["metadata"]["name"] for o in twins]
    assert len(set(names)) == 3 and all(n.startswith("triage-notes-") and n.endswith("-hospital-a") for n in names)
    long = Owner("x" * 253, "ns", "uid")
    for silo in ("a", "y" * 63):
        name = silo_job_name(long, silo)
        assert len(name) <= 63 and not name.endswith("-")
    assert silo_job_name(long, "y" * 63) != silo_job_name(Owner("x" * 252, "ns", "uid"), "y" * 63)


def test_every_child_names_its_owner_and_ownership_is_checked_by_uid():
    spec = FederatedFinetuneSpec.model_validate(EXAMPLE["spec"])
    for child in desired_children(OWNER, spec):
        assert child["metadata"]["labels"][OWNER_UID_LABEL] == OWNER.uid and owned_by(child, OWNER.uid)
        assert not owned_by(child, "someone-else")
        if child["metadata"]["namespace"] == OWNER.namespace:
            assert child["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert not owned_by({"metadata": {"name": "nightly-backup"}}, OWNER.uid) and not owned_by(None, OWNER.uid)


def test_mutual_tls_aggregator_pins_silos_to_its_federation_and_admits_the_observer():
    spec = FederatedFinetuneSpec.model_validate(EXAMPLE["spec"])
    site = Site(operator_namespace="fedshield-system", observer_uri="spiffe://fedshield.io/ns/fedshield-system/sa/fs-operator")
    command = aggregator_deployment(OWNER, spec, site)["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--federation") + 1] == "fedshield/triage-notes"
    assert command[command.index("--observer") + 1] == site.observer_uri
    policy = aggregator_network_policy(OWNER, spec, site)
    kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    api = policy["spec"]["ingress"][0]["from"]
    assert api[1]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "fedshield-system"}}
    insecure = FederatedFinetuneSpec.model_validate(dict(EXAMPLE["spec"], insecure=True, aggregator={"publicKeySecret": "k"},
                                                         silos=[{k: v for k, v in s.items() if k != "tls"} for s in EXAMPLE["spec"]["silos"]]))
    assert "--federation" not in aggregator_deployment(OWNER, insecure)["spec"]["template"]["spec"]["containers"][0]["command"]


def test_suspend_scales_the_aggregator_to_zero_and_suspends_jobs():
    children = desired_children(OWNER, spec_with(3, suspend=True))
    assert next(c for c in children if c["kind"] == "Deployment")["spec"]["replicas"] == 0
    assert all(c["spec"]["suspend"] for c in children if c["kind"] == "Job")


def test_plan_configmap_is_a_valid_federation_config():
    spec = FederatedFinetuneSpec.model_validate(EXAMPLE["spec"])
    plan = next(c for c in desired_children(OWNER, spec) if c["kind"] == "ConfigMap")
    config = FederationConfig.model_validate(yaml.safe_load(plan["data"]["config.yaml"]))
    assert config == federation_config(OWNER, spec)
    assert config.silo_names == ("hospital-a", "hospital-b", "clinic-c") and config.privacy.pruning == 0.9


def _job(active=0, succeeded=0, failed=0, conditions=()):
    return {"status": {"active": active, "succeeded": succeeded, "failed": failed,
                       "conditions": [{"type": t, "status": "True"} for t in conditions]}}


def test_status_follows_jobs_and_aggregator_progress():
    spec = FederatedFinetuneSpec.model_validate(EXAMPLE["spec"])
    names = [s.name for s in spec.silos]
    pending = compute_status(spec, Observed(), None, "2026-11-23T08:00:00Z", 1)
    assert pending["phase"] == "Pending" and pending["silosReady"] == "0/3"
    running_obs = Observed(jobs={n: _job(active=1) for n in names}, aggregator_ready=True, aggregator=status_of({
        "plan": {"state": "open"}, "closed": [{"round": 0, "contributors": names,
                                                "metadata": {n: {"val_score": a} for n, a in zip(names, (0.6, 0.7, 0.65), strict=False)}}]}))
    running = compute_status(spec, running_obs, pending, "2026-11-23T08:05:00Z", 1)
    assert running["phase"] == "Running" and running["round"] == 1 and running["fairnessGap"] == 0.1
    assert running["startTime"] == "2026-11-23T08:05:00Z"
    ready = next(c for c in running["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 1
    again = compute_status(spec, running_obs, running, "2026-11-23T08:06:00Z", 1)
    assert next(c for c in again["conditions"] if c["type"] == "Ready")["lastTransitionTime"] == "2026-11-23T08:05:00Z"
    done = compute_status(spec, Observed(jobs={n: _job(succeeded=1, conditions=["Complete"]) for n in names}, aggregator_ready=True,
                                         aggregator=status_of({"plan": {"state": "finished"}, "closed": []})), again, "2026-11-23T09:00:00Z", 1)
    assert done["phase"] == "Succeeded" and done["completionTime"] == "2026-11-23T09:00:00Z"


def test_failed_silo_pod_is_reported_with_exit_code_and_reason():
    spec = FederatedFinetuneSpec.model_validate(EXAMPLE["spec"])
    pod = {"status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}}
    observed = Observed(jobs={"hospital-a": _job(failed=2), "hospital-b": _job(active=1), "clinic-c": _job(active=1)},
                        failed_pods={"hospital-a": [pod]}, aggregator_ready=True, aggregator=status_of({"plan": {"state": "open"}, "closed": []}))
    status = compute_status(spec, observed, None, "2026-11-23T08:00:00Z", 2)
    silo = next(s for s in status["silos"] if s["name"] == "hospital-a")
    assert (silo["phase"], silo["exitCode"], silo["reason"], silo["restarts"]) == ("Pending", 137, "OOMKilled", 2)
    assert status["phase"] == "Running" and next(c for c in status["conditions"] if c["type"] == "Degraded")["status"] == "True"
    exhausted = Observed(jobs={"hospital-a": _job(failed=5, conditions=["Failed"]), "hospital-b": _job(conditions=["Failed"]),
                               "clinic-c": _job(active=1)}, failed_pods={"hospital-a": [pod]}, aggregator_ready=True)
    failed = compute_status(spec, exhausted, status, "2026-11-23T08:10:00Z", 2)
    assert failed["phase"] == "Failed"  # 1 silo left < minSilos=2
    message = next(c for c in failed["conditions"] if c["type"] == "Failed")["message"]
    assert "hospital-a failed (OOMKilled, exit code 137)" in message


def test_withdrawn_silo_and_epsilon_appear_in_status():
    spec = FederatedFinetuneSpec.model_validate(EXAMPLE["spec"])
    observed = Observed(jobs={"hospital-a": _job(succeeded=1)}, aggregator_ready=True, aggregator=status_of({
        "plan": {"state": "open", "withdrawn": {"hospital-a": "privacy budget spent"}},
        "closed": [{"round": 0, "contributors": ["hospital-a"], "metadata": {"hospital-a": {"epsilon": 1.25, "epsilon_unit": "record"}}}]}))
    status = compute_status(spec, observed, None, "t", 1)
    silos = {s["name"]: s for s in status["silos"]}
    assert silos["hospital-a"]["reason"] == "Withdrawn: privacy budget spent"
    assert status["epsilon"] == 1.25 and status["epsilonUnit"] == "record"
    assert silos["hospital-a"]["epsilon"] == 1.25 and "epsilon" not in silos["hospital-b"]  # each silo's own spend, when known


def test_fifty_silo_reconcile_is_fast():
    spec = spec_with(50)
    start = time.perf_counter()
    desired_children(OWNER, spec)
    compute_status(spec, Observed(jobs={s.name: _job(active=1) for s in spec.silos}, aggregator_ready=True), None, "t", 1)
    assert time.perf_counter() - start < 5  # the figure itself is in benchmarks/operator.py


def tls_spec() -> FederatedFinetuneSpec:
    raw = dict(EXAMPLE["spec"])
    raw["aggregator"] = dict(raw["aggregator"], tls={"secretName": "aggregator-tls"})
    raw["silos"] = [dict(s, tls={"secretName": f"{s['name']}-tls"}) for s in raw["silos"]]
    return FederatedFinetuneSpec.model_validate(raw)


def test_mutual_tls_mounts_cert_manager_secrets_and_uses_https():
    spec = tls_spec()
    children = desired_children(OWNER, spec)
    for manifest in children:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    aggregator = next(c for c in children if c["kind"] == "Deployment")["spec"]["template"]["spec"]
    container = aggregator["containers"][0]
    assert {v["name"]: v for v in aggregator["volumes"]}["tls"]["secret"]["secretName"] == "aggregator-tls"
    command = container["command"]
    assert command[command.index("--client-ca") + 1].endswith("/ca.crt") and "--tls-cert" in command and "--tls-key" in command
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS" == container["livenessProbe"]["httpGet"]["scheme"]
    for silo in spec.silos:
        pod = silo_job(OWNER, spec, silo)["spec"]["template"]["spec"]
        assert {v["name"]: v for v in pod["volumes"]}["tls"]["secret"]["secretName"] == f"{silo.name}-tls"
        command = pod["containers"][0]["command"]
        assert command[command.index("--aggregator") + 1] == aggregator_url(OWNER, tls=True).replace("http://", "https://")
        assert command[command.index("--aggregator") + 1].startswith("https://")
        assert {"--ca", "--cert", "--key"} <= set(command)


@pytest.mark.parametrize("where", ["aggregator", "one silo"])
def test_tls_on_one_side_only_is_refused(where):
    raw = tls_spec().model_dump(by_alias=True, exclude_none=True)
    if where == "aggregator":
        del raw["aggregator"]["tls"]
    else:
        del raw["silos"][0]["tls"]
    with pytest.raises(ValueError, match="tls: set aggregator.tls and every silo's tls together"):
        FederatedFinetuneSpec.model_validate(raw)


def test_silo_pods_keep_metrics_up_after_the_last_round():
    spec = FederatedFinetuneSpec.model_validate(EXAMPLE["spec"])
    env = {e["name"]: e["value"] for e in silo_job(OWNER, spec, spec.silos[0])["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert float(env["FEDSHIELD_METRICS_LINGER_S"]) >= 60  # two scrapes at the usual 30 s interval


def test_evicted_silo_pod_is_reported_while_the_job_recreates_it():
    """A node drain evicts the silo's pod (no container exit): the Job makes a new pod, status says why and counts it."""
    spec = FederatedFinetuneSpec.model_validate(EXAMPLE["spec"])
    evicted = {"status": {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}}
    observed = Observed(jobs={"hospital-a": _job(active=1, failed=1), "hospital-b": _job(active=1), "clinic-c": _job(active=1)},
                        failed_pods={"hospital-a": [evicted]}, aggregator_ready=True, aggregator=status_of({"plan": {"state": "open"}, "closed": []}))
    status = compute_status(spec, observed, None, "2026-11-23T08:00:00Z", 1)
    silo = next(s for s in status["silos"] if s["name"] == "hospital-a")
    assert (silo["phase"], silo["reason"], silo["restarts"]) == ("Running", "Evicted", 1) and silo.get("exitCode") is None
    assert status["phase"] == "Running"
