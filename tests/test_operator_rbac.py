"""The operator's RBAC grants nothing on Secrets, and everything its code calls.

Checked on the template as written and, where helm is available, on what helm renders
with the default and every example values file (test_charts.py finds helm).
"""

import re
from pathlib import Path

import pytest
import yaml

from fedshield.operator.kube import PLURALS

from test_charts import CASES, OPERATOR, render

RBAC = OPERATOR / "templates" / "rbac.yaml"
RENDER_CASES = [args for chart, args in CASES if chart == OPERATOR]
RENDER_IDS = [Path(args[1]).name if args else "defaults" for args in RENDER_CASES]


def template_rules() -> list[dict]:
    text = re.sub(r"\{\{[^}]*\}\}", "x", RBAC.read_text())  # the templated names do not matter here
    role = next(doc for doc in yaml.safe_load_all(text) if doc["kind"] == "ClusterRole")
    return role["rules"]


def rendered_roles(args) -> list[dict]:
    docs = render(OPERATOR, *args, namespace="fedshield", release="fs")
    roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role")]
    assert [r["kind"] for r in roles] == ["ClusterRole"]
    bindings = [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert [b["roleRef"]["name"] for b in bindings] == [roles[0]["metadata"]["name"]]
    assert bindings[0]["subjects"] == [{"kind": "ServiceAccount", "name": "fs-operator", "namespace": "fedshield"}]
    return roles


def assert_no_secrets_nor_wildcards(rules: list[dict]) -> None:
    assert rules
    for rule in rules:
        assert "secrets" not in rule["resources"] and "*" not in rule["resources"] and "*" not in rule["verbs"]
        assert "*" not in rule["apiGroups"] and "nonResourceURLs" not in rule and "resourceNames" not in rule


def test_no_rule_mentions_secrets_or_wildcards():
    assert_no_secrets_nor_wildcards(template_rules())


@pytest.mark.parametrize("args", RENDER_CASES, ids=RENDER_IDS)
def test_rendered_rbac_has_no_secrets_and_matches_the_template(args):
    [role] = rendered_roles(args)
    assert_no_secrets_nor_wildcards(role["rules"])
    assert role["rules"] == template_rules()
    assert "aggregationRule" not in role


def test_every_kind_the_operator_writes_is_granted():
    granted = {(group, res): set(rule["verbs"]) for rule in template_rules() for group in rule["apiGroups"] for res in rule["resources"]}
    for (api_version, _), plural in PLURALS.items():
        group = "" if api_version == "v1" else api_version.split("/")[0]
        verbs = granted[(group, plural)]
        assert {"get", "list"} <= verbs
        if plural != "pods":
            assert {"create", "patch"} <= verbs
    assert {"patch"} <= granted[("fedshield.io", "federatedfinetunes/status")]


def test_federated_unlearnings_and_their_status_are_granted():
    granted = {(group, res): set(rule["verbs"]) for rule in template_rules() for group in rule["apiGroups"] for res in rule["resources"]}
    assert {"get", "list", "watch", "patch"} <= granted[("fedshield.io", "federatedunlearnings")]
    assert {"patch"} <= granted[("fedshield.io", "federatedunlearnings/status")]
    assert {"get"} <= granted[("fedshield.io", "federatedfinetunes")]  # the unlearning reads the finetune it names
