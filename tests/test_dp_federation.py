"""DP in a real federation: a silo at its budget stops uploading and the round goes on without it."""

import json

import pytest

from fedshield.config import DPSpec, FederationConfig, PrivacySpec, SiloSpec, TrainingSpec
from fedshield.crypto import EnvelopeReader
from fedshield.local.demo import run_local
from fedshield.privacy import epsilon

pytestmark = pytest.mark.slow


def test_silo_at_its_budget_withdraws_and_the_federation_goes_on(tmp_path):
    one_round = epsilon(1.0, 1, 1e-5)
    config = FederationConfig(
        rounds=2, silos=(SiloSpec(name="bank-a"), SiloSpec(name="bank-b", epsilon_budget=one_round * 1.01), SiloSpec(name="bank-c")),
        training=TrainingSpec(local_steps=3, batch_size=8),
        privacy=PrivacySpec(pruning=0.5, dp=DPSpec(enabled=True, clip_norm=0.5, noise_multiplier=1.0)),
    )
    report = run_local(config, tmp_path)
    rounds = {r["round"]: sorted(r["silos"]) for r in report["rounds"]}
    assert rounds == {0: ["bank-a", "bank-b", "bank-c"], 1: ["bank-a", "bank-c"]}  # two left: still an aggregate
    assert report["rounds"][0]["silos"]["bank-b"]["epsilon"] == pytest.approx(one_round)
    aggregate = EnvelopeReader.open(tmp_path / "state" / "rounds" / "00001" / "aggregate.fshe")
    assert sorted(aggregate.header.contributors) == ["bank-a", "bank-c"]
    log = (tmp_path / "logs" / "bank-b.log").read_text()
    assert "privacy budget spent" in log
    assert json.loads((tmp_path / "report.json").read_text())["rounds"][1]["silos"]["bank-a"]["epsilon"] == pytest.approx(epsilon(1.0, 2, 1e-5))
