"""The operator's RBAC grants nothing on Secrets, and everything its code calls."""

import re
from pathlib import Path

import yaml

from fedshield.operator.kube import PLURALS

RBAC = Path(__file__).resolve().parents[1] / "charts" / "fedshield-operator" / "templates" / "rbac.yaml"


def rules() -> list[dict]:
    text = re.sub(r"\{\{[^}]*\}\}", "x", RBAC.read_text())  # the templated names do not matter here
    role = next(doc for doc in yaml.safe_load_all(text) if doc["kind"] == "ClusterRole")
    return role["rules"]


def test_no_rule_mentions_secrets_or_wildcards():
    for rule in rules():
        assert "secrets" not in rule["resources"] and "*" not in rule["resources"] and "*" not in rule["verbs"]


def test_every_kind_the_operator_writes_is_granted():
    granted = {(group, res): set(rule["verbs"]) for rule in rules() for group in rule["apiGroups"] for res in rule["resources"]}
    for (api_version, _), plural in PLURALS.items():
        group = "" if api_version == "v1" else api_version.split("/")[0]
        verbs = granted[(group, plural)]
        assert {"get", "list"} <= verbs
        if plural != "pods":
            assert {"create", "patch"} <= verbs
    assert {"patch"} <= granted[("fedshield.io", "federatedfinetunes/status")]
