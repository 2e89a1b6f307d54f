"""The operator's RBAC: cluster-wide it only reads (and writes its CRs' finalizers and status); its write verbs on
workloads are namespaced Roles, in the aggregator namespaces (operator chart) and in each consenting silo namespace
(silo chart, with the membership). Nothing on Secrets, anywhere.

Checked on the templates as written and on what helm renders with the defaults and every example values file
(test_charts.py finds helm).
"""

import re
from pathlib import Path

import pytest
import yaml
from support.charts import CASES, EXAMPLE, OPERATOR, OWNER, SILO, render

from fedshield.api.models import FederatedFinetuneSpec
from fedshield.api.unlearning import FederatedUnlearningSpec
from fedshield.operator import unlearning as fu
from fedshield.operator.kube import PLURALS, READ_ONLY
from fedshield.operator.manifests import Site, desired_children

RBAC = OPERATOR / "templates" / "rbac.yaml"
RENDER_CASES = [args for chart, args in CASES if chart == OPERATOR]
RENDER_IDS = [Path(args[1]).name if args else "defaults" for args in RENDER_CASES]
SILO_CASES = [args for chart, args in CASES if chart == SILO]
SILO_IDS = [Path(args[1]).name if args else "defaults" for args in SILO_CASES]
WORKLOADS = {"jobs", "deployments", "services", "configmaps", "persistentvolumeclaims", "pods", "networkpolicies", "secrets"}
WRITE_VERBS = {"create", "patch", "update", "delete", "deletecollection", "*"}
CONSENT = ["--set", "membership.federations[0].namespace=fedshield", "--set", "membership.federations[0].name=triage-notes",
           "--set", "operator.serviceAccount=fs-operator"]


def template_rules() -> list[dict]:
    first = RBAC.read_text().split("\n---\n")[0]  # the ClusterRole
    role = yaml.safe_load(re.sub(r"\{\{[^}]*\}\}", "x", first))
    assert role["kind"] == "ClusterRole"
    return role["rules"]


def granted(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                out.setdefault((group, res), set()).update(rule["verbs"])
    return out


def assert_no_secrets_nor_wildcards(rules: list[dict]) -> None:
    assert rules
    for rule in rules:
        assert "secrets" not in rule["resources"] and "*" not in rule["resources"] and "*" not in rule["verbs"]
        assert "*" not in rule["apiGroups"] and "nonResourceURLs" not in rule and "resourceNames" not in rule


def group_of(api_version: str) -> str:
    return "" if api_version == "v1" else api_version.split("/")[0]


def test_no_rule_mentions_secrets_or_wildcards_and_the_cluster_role_writes_no_workload():
    rules = template_rules()
    assert_no_secrets_nor_wildcards(rules)
    for (_, res), verbs in granted(rules).items():
        assert res not in WORKLOADS, f"the ClusterRole grants {sorted(verbs)} on {res}"


@pytest.mark.parametrize("args", RENDER_CASES, ids=RENDER_IDS)
def test_rendered_operator_chart_has_no_cluster_wide_workload_writes_and_roles_only_where_listed(args):
    docs = render(OPERATOR, *args, namespace="fedshield", release="fs")
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    assert [r["metadata"]["name"] for r in cluster_roles] == ["fs-operator"]
    for role in cluster_roles:
        assert_no_secrets_nor_wildcards(role["rules"])
        assert "aggregationRule" not in role
        for (_, res), verbs in granted(role["rules"]).items():
            assert res not in WORKLOADS or not verbs & WRITE_VERBS, f"ClusterRole grants {sorted(verbs & WRITE_VERBS)} on {res}"
    assert cluster_roles[0]["rules"] == template_rules()
    roles = [d for d in docs if d["kind"] == "Role"]
    assert [r["metadata"]["namespace"] for r in roles] == ["fedshield"]  # default: the release namespace only
    for role in roles:
        assert_no_secrets_nor_wildcards(role["rules"])
    subjects = [{"kind": "ServiceAccount", "name": "fs-operator", "namespace": "fedshield"}]
    assert all(b["subjects"] == subjects for b in docs if b["kind"] in ("RoleBinding", "ClusterRoleBinding"))
    assert not [b for b in docs if b["kind"] == "ClusterRoleBinding" and b["roleRef"]["kind"] != "ClusterRole"]


def test_aggregator_namespaces_each_get_a_role():
    docs = render(OPERATOR, "--set", "aggregatorNamespaces={fedshield,team-b}", namespace="fedshield", release="fs")
    assert sorted(r["metadata"]["namespace"] for r in docs if r["kind"] == "Role") == ["fedshield", "team-b"]
    bindings = [b for b in docs if b["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["fedshield", "team-b"]
    assert all(b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "fs-operator-aggregators"} for b in bindings)


def silo_role(args=()) -> tuple[dict | None, dict | None]:
    docs = render(SILO, *args, namespace="org-hospital-a", release="hospital-a")
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")]
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert len(roles) <= 1 and len(bindings) == len(roles)
    return (roles[0] if roles else None), (bindings[0] if bindings else None)


@pytest.mark.parametrize("args", SILO_CASES, ids=SILO_IDS)
def test_the_silo_chart_grants_the_operator_writes_in_its_namespace_only_with_consent(args):
    docs = render(SILO, *args, namespace="org-hospital-a", release="hospital-a")
    role, binding = silo_role(args)
    memberships = [d for d in docs if d["kind"] == "FederationMembership"]
    assert (role is None) == (not memberships)  # the RoleBinding comes with the membership, never without
    if role is None:
        return
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "org-hospital-a"
    assert_no_secrets_nor_wildcards(role["rules"])
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    values = yaml.safe_load(Path(args[1]).read_text()) if args else {}
    operator = {"serviceAccount": "fedshield-operator", "namespace": "fedshield", **values.get("operator", {})}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": operator["serviceAccount"], "namespace": operator["namespace"]}]


def test_without_consent_the_silo_chart_grants_nothing():
    assert silo_role() == (None, None)


def test_every_kind_the_operator_writes_is_granted_where_it_writes_it():
    spec = FederatedFinetuneSpec.model_validate(EXAMPLE["spec"])
    cluster = granted(template_rules())
    aggregators = granted(next(d for d in render(OPERATOR, namespace="fedshield", release="fs") if d["kind"] == "Role")["rules"])
    silo_rules = granted(silo_role(CONSENT)[0]["rules"])
    target = fu.Target("forget-1", OWNER.namespace, "uid")
    unlearning = FederatedUnlearningSpec.model_validate({"finetune": OWNER.name, "silo": "hospital-a", "forget": {"users": ["u"]},
                                                         "requestedBy": "dpo"})
    written = desired_children(OWNER, spec) + fu.unlearning_children(target, OWNER, spec, unlearning)
    written += fu.apply_jobs(target, OWNER, spec, unlearning)
    for child in written:
        where = aggregators if child["metadata"]["namespace"] == OWNER.namespace else silo_rules
        key = (group_of(child["apiVersion"]), PLURALS[(child["apiVersion"], child["kind"])])
        assert {"get", "create", "patch"} <= where.get(key, set()), f"{child['kind']} in {child['metadata']['namespace']}"
        assert not cluster.get(key, set()) & WRITE_VERBS
    assert {"delete"} <= silo_rules[("batch", "jobs")] and {"delete"} <= silo_rules[("", "configmaps")]
    assert {"list"} <= silo_rules[("", "pods")] and {"list"} <= aggregators[("", "pods")]
    for (api_version, _), plural in READ_ONLY.items():
        assert {"get", "list"} <= cluster[(group_of(api_version), plural)]
        assert not cluster[(group_of(api_version), plural)] & WRITE_VERBS  # consent is the organisation's, never the operator's


def test_federated_resources_and_their_status_are_granted():
    cluster = granted(template_rules())
    assert {"get", "list", "watch", "patch"} <= cluster[("fedshield.io", "federatedunlearnings")]
    assert {"patch"} <= cluster[("fedshield.io", "federatedunlearnings/status")]
    assert {"patch"} <= cluster[("fedshield.io", "federatedfinetunes/status")]
    assert {"get"} <= cluster[("fedshield.io", "federatedfinetunes")]  # the unlearning reads the finetune it names


def test_trainjob_mode_writes_are_granted_in_silo_namespaces_only_when_asked_and_never_cluster_wide():
    """``multiNode: trainjob``: the TrainJob (get, list, create, patch, delete: apply, observe, cleanup) is granted by the
    silo chart's ``operator.trainJobs``, in that namespace; the operator chart's ClusterRole has no trainer.kubeflow.org rule
    (the ClusterTrainingRuntime is installed by helm, not written by the operator)."""
    raw = dict(EXAMPLE["spec"], training=dict(EXAMPLE["spec"]["training"], batchSize=192))
    raw["silos"] = [dict(raw["silos"][0], nodes=2)] + raw["silos"][1:]
    children = desired_children(OWNER, FederatedFinetuneSpec.model_validate(raw), Site(multi_node="trainjob"))
    [trainjob] = [c for c in children if c["kind"] == "TrainJob"]
    key = (group_of(trainjob["apiVersion"]), PLURALS[(trainjob["apiVersion"], trainjob["kind"])])
    assert key == ("trainer.kubeflow.org", "trainjobs") and trainjob["metadata"]["namespace"] != OWNER.namespace
    assert not [r for r in template_rules() if "trainer.kubeflow.org" in r["apiGroups"]]
    assert granted(silo_role([*CONSENT, "--set", "operator.trainJobs=true"])[0]["rules"])[key] == {"get", "list", "create", "patch", "delete"}
    assert key not in granted(silo_role(CONSENT)[0]["rules"])  # off by default
    for mode in ("trainjob", "auto"):
        docs = render(OPERATOR, "--set", f"multiNode={mode}", namespace="fedshield", release="fs")
        for role in (d for d in docs if d["kind"] in ("ClusterRole", "Role")):
            assert not [r for r in role["rules"] if "trainer.kubeflow.org" in r["apiGroups"]]
