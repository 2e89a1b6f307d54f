"""The default demo, shortened to 3 rounds: the federation learns and report.json says so."""

import json

import pytest

from fedshield.config import FederationConfig
from fedshield.local.demo import run_local

pytestmark = pytest.mark.slow


def test_demo_mean_auc_rises_above_chance_and_above_the_first_round(tmp_path):
    """The demo's score is AUC (the recommendation workload)."""
    report = run_local(FederationConfig(rounds=3), tmp_path)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["summary"] == report["summary"]
    first, last = on_disk["rounds"][0]["mean_score"], on_disk["rounds"][-1]["mean_score"]
    assert on_disk["summary"]["metric"] == "auc"
    assert last > 0.5 and last > first, (first, last)
    assert on_disk["summary"]["final_mean_score"] == last
