"""DP in a real federation: a silo at its budget stops uploading and the round goes on without it."""

import json

import pytest

from fedshield.aggregator.store import Store
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


def test_record_level_dp_sgd_in_a_real_federation_spends_per_step_and_stops_at_the_budget(tmp_path):
    """DP-SGD at the record level, chosen in the spec: epsilon composes every step of every round (PLD), is
    reported with its unit, and a silo whose budget covers one round's steps withdraws before the second."""
    from fedshield.learning.data import silo_examples
    from fedshield.privacy import dp_sgd_epsilon

    dp = DPSpec(enabled=True, unit="record", clip_norm=1.0, noise_multiplier=1.1, sampling_rate=0.1)
    steps = 3
    one_round = dp_sgd_epsilon(0.1, 1.1, steps, 1e-5)
    config = FederationConfig(
        rounds=2, silos=(SiloSpec(name="bank-a"), SiloSpec(name="bank-b", epsilon_budget=one_round * 1.01), SiloSpec(name="bank-c")),
        training=TrainingSpec(local_steps=steps, batch_size=8), privacy=PrivacySpec(pruning=0.5, dp=dp),
    )
    assert config.dp_budget("bank-a") is None  # no silo-level noise on the update under DP-SGD
    assert len(silo_examples(config, "bank-a")[0]) > 0
    report = run_local(config, tmp_path)
    rounds = {r["round"]: sorted(r["silos"]) for r in report["rounds"]}
    assert rounds == {0: ["bank-a", "bank-b", "bank-c"], 1: ["bank-a", "bank-c"]}
    first = report["rounds"][0]["silos"]["bank-b"]
    assert first["epsilon"] == pytest.approx(one_round)
    assert report["rounds"][1]["silos"]["bank-a"]["epsilon"] == pytest.approx(dp_sgd_epsilon(0.1, 1.1, 2 * steps, 1e-5))
    log = (tmp_path / "logs" / "bank-b.log").read_text()
    assert "privacy budget spent" in log and "record-level epsilon" in log
    metrics = [json.loads(line) for line in (tmp_path / "silos" / "bank-a" / "metrics.jsonl").read_text().splitlines()]
    assert {m["epsilon_unit"] for m in metrics} == {"record"}
    store = Store(tmp_path / "state")  # the unit reached the aggregator with each upload's metadata
    assert {u.metadata["epsilon_unit"] for u in store.uploads(0)} == {"record"}
