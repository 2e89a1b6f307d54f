"""aggregation.personalise in a small in-process federation: it finishes, every silo's personal adapter is scored each
round with the warm-up weight of the aggregator's rule, the global state is the same as without it, and the demo's
report carries the personal scores."""

from __future__ import annotations

import numpy as np
import pytest

from fedshield.config import AggregationSpec, FederationConfig, LoraSpec, SiloSpec, TrainingSpec
from fedshield.local.demo import build_report, round_table
from fedshield.local.simulation import InProcessFederation
from fedshield.plan import compute_mix_weights

pytestmark = pytest.mark.slow


def tiny(personalise: bool) -> FederationConfig:
    return FederationConfig(
        rounds=2, silos=(SiloSpec(name="clinic-a"), SiloSpec(name="clinic-b"), SiloSpec(name="clinic-c")),
        lora=LoraSpec(r=2, target_modules=("q_proj", "v_proj")), training=TrainingSpec(local_steps=2, batch_size=4),
        aggregation=AggregationSpec(personalise=personalise, warmup_temperature=0.2, warmup_beta=5.0),
    )


def test_a_personalised_federation_finishes_and_records_personal_scores(tmp_path, keys):
    config = tiny(True)
    federation = InProcessFederation(config, tmp_path, keys=keys)
    rounds = federation.run()
    names = set(config.silo_names)
    assert len(rounds) == 2
    assert rounds[0].mix_weights == compute_mix_weights(config, {}, 0)  # round 0: equal losses
    losses = {s: m[federation.task.loss_metric] for s, m in rounds[0].metrics.items()}
    assert rounds[1].mix_weights == pytest.approx(compute_mix_weights(config, losses, 1))
    for r in rounds:
        assert set(r.personal_scores) == set(r.personal_metrics) == names
        assert all(0.0 <= v <= 1.0 for v in r.personal_scores.values())
        assert all(0.0 < w <= 1.0 for w in r.mix_weights.values())
    # the personal adapter is the silo's own: with a weight below 1 it differs from the global model somewhere
    assert any(abs(r.personal_scores[s] - r.scores[s]) > 0 or r.personal_metrics[s] != r.metrics[s]
               for r in rounds for s in names)

    plain = InProcessFederation(tiny(False), tmp_path / "plain", keys=keys)
    plain_rounds = plain.run()
    assert np.array_equal(plain.global_shared, federation.global_shared)  # personalising never changes the federation's state
    assert plain_rounds[-1].scores == rounds[-1].scores and plain_rounds[-1].personal_scores == {}


def test_the_demo_report_and_table_show_the_personal_score():
    config = tiny(True)
    base = {"val_loss": 0.6, "metric": "auc", "metrics": {"auc": 0.6, "logloss": 0.6}, "upload_bytes": 10, "download_bytes": 5,
            "encrypt_s": 0.1, "decrypt_s": 0.1, "round_s": 1.0}
    records = [base | {"round": r, "silo": s, "score": 0.5 + i / 10, "mix_weight": 0.7 + r / 10, "personal_score": 0.6 + i / 10}
               for r in range(2) for i, s in enumerate(config.silo_names)]
    report = build_report(config, records, 1.0)
    summary = report["summary"]
    assert summary["personalise"] is True and summary["final_mean_personal_score"] == pytest.approx(0.7)
    assert summary["final_personal_fairness"]["gap"] == pytest.approx(0.2)
    assert report["rounds"][1]["silos"]["clinic-a"]["mix_weight"] == pytest.approx(0.8)
    assert [c.header for c in round_table(config, 1, records[3:]).columns][-7:-5] == ["mix w", "personal"]
    off = build_report(tiny(False), [{k: v for k, v in x.items() if k not in ("mix_weight", "personal_score")} for x in records], 1.0)
    assert off["summary"]["final_mean_personal_score"] is None and off["summary"]["final_personal_fairness"] is None
