"""The in-process federation plans its rounds as the aggregator does (``plan``), and ``run_alone`` is local-only."""

from __future__ import annotations

import numpy as np
import pytest

from fedshield.config import AggregationSpec, FederationConfig, LoraSpec, SiloSpec, TrainingSpec
from fedshield.local.simulation import InProcessFederation
from fedshield.plan import compute_plan, effective_samples

pytestmark = pytest.mark.slow


def config(strategy: str, declared: bool) -> FederationConfig:
    return FederationConfig(
        rounds=2, silos=tuple(SiloSpec(name=n, samples=9 if declared else None) for n in ("clinic-a", "clinic-b")),
        lora=LoraSpec(r=2, target_modules=("q_proj", "v_proj")), training=TrainingSpec(local_steps=2, batch_size=4),
        aggregation=AggregationSpec(strategy=strategy, q=2.0, gamma=1.0),
    )


def test_dynamic_balance_rounds_use_the_aggregators_plan(tmp_path):
    cfg = config("dynamic_balance", declared=True)
    federation = InProcessFederation(cfg, tmp_path, encrypted=False)
    rounds = federation.run()
    samples = effective_samples(cfg, {s.name: len(s.train) for s in federation.silos})
    assert samples == {"clinic-a": 9, "clinic-b": 9}  # the training sets are larger: the declared counts bound them
    assert rounds[0].weights == compute_plan(cfg, samples, {})[0] == {"clinic-a": 0.5, "clinic-b": 0.5}
    losses = {s: m[federation.task.loss_metric] for s, m in rounds[0].metrics.items()}
    weights, scales = compute_plan(cfg, samples, losses)
    assert rounds[1].weights == pytest.approx(weights) and federation.lr_scales == pytest.approx(scales)
    worse = max(losses, key=losses.__getitem__)
    assert weights[worse] > 0.5 and scales[worse] > 1.0  # q-FFL weighs the higher-loss silo up


def test_run_alone_trains_every_silo_and_aggregates_nothing(tmp_path):
    federation = InProcessFederation(config("fedavg", declared=False), tmp_path, encrypted=False)
    start = federation.global_shared.copy()
    before = [federation.layout.flatten(s.params) for s in federation.silos]
    rounds = federation.run_alone(2)
    after = [federation.layout.flatten(s.params) for s in federation.silos]
    assert [r.round for r in rounds] == [0, 1] and all(set(r.scores) == {"clinic-a", "clinic-b"} for r in rounds)
    assert np.array_equal(federation.global_shared, start) and all(not np.array_equal(a, b) for a, b in zip(after, before, strict=True))
    assert not np.array_equal(after[0], after[1])  # each silo kept its own adapter


def test_dp_sgd_silos_train_with_the_agents_noise_and_sampling(tmp_path):
    from fedshield.config import DPSpec, PrivacySpec
    from fedshield.learning.dp_sgd import silo_dp_sgd

    dp = DPSpec(enabled=True, unit="record", clip_norm=1.0, target_epsilon=8.0, delta=1e-5)
    cfg = config("fedavg", declared=False).model_copy(update={"privacy": PrivacySpec(pruning=0.5, dp=dp)})
    federation = InProcessFederation(cfg, tmp_path, encrypted=False)
    for silo in federation.silos:
        expected = silo_dp_sgd(cfg, silo.name, [e.user for e in silo.train])
        assert expected is not None and silo.dp == expected[0]
    start = federation.global_shared.copy()
    rounds = federation.run()
    assert len(rounds) == 2 and not np.array_equal(federation.global_shared, start)
    assert np.isfinite(federation.global_shared).all()
