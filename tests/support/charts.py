"""The two Helm charts rendered with helm, and the example CR they are checked against."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fedshield.operator.manifests import Owner

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "charts"
OPERATOR, SILO = CHARTS / "fedshield-operator", CHARTS / "fedshield-silo"
EXAMPLE = yaml.safe_load((ROOT / "examples" / "federatedfinetune.yaml").read_text())
OWNER = Owner("triage-notes", "fedshield", "0b9c7a34-1111-2222-3333-444455556666")
K8S_VERSION = "1.34"
MONITORING = "monitoring.coreos.com/v1"


def helm_path() -> str | None:
    local = ROOT / ".tools" / "bin" / "helm"
    return str(local) if os.access(local, os.X_OK) else shutil.which("helm")


def require_helm() -> str:
    helm = helm_path()
    if helm is None:
        message = "helm not found: run scripts/install-helm.sh"
        if os.environ.get("FEDSHIELD_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return helm


def run_helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_helm(), *args], capture_output=True, text=True, timeout=120)


def render(chart: Path, *args: str, namespace: str = "org-hospital-a", release: str = "hospital-a") -> list[dict]:
    result = run_helm("template", release, str(chart), "--namespace", namespace, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(docs: list[dict], kind: str) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def matches(selector: dict, pod_labels: dict) -> bool:
    """Label-selector semantics for matchLabels and In / NotIn / Exists expressions."""
    if any(pod_labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = pod_labels.get(expr["key"]), expr["operator"]
        if (op == "In" and value not in expr["values"]) or (op == "NotIn" and value in expr["values"]) \
                or (op == "Exists" and value is None):
            return False
    return True


# (chart, helm arguments): defaults, then every values file under ci/ and examples/values/.
CASES = [(OPERATOR, ()), (SILO, ())] + [
    (chart, ("-f", str(f))) for chart in (OPERATOR, SILO) for f in sorted((chart / "ci").glob("*.yaml"))
] + [(OPERATOR if "operator" in f.name else SILO, ("-f", str(f))) for f in sorted((ROOT / "examples" / "values").glob("*.yaml"))]
CASE_IDS = [f"{chart.name}:{Path(args[1]).name if args else 'defaults'}" for chart, args in CASES]
SILO_CASES = [(args) for chart, args in CASES if chart == SILO]
SILO_IDS = [i for i, (chart, _) in zip(CASE_IDS, CASES, strict=False) if chart == SILO]
