"""The fairness and DP benchmarks' split declares each silo's sample count, so FedAvg there is sample-weighted."""

import pytest
from support.benchmarks import load_benchmark

from fedshield.learning.data import silo_split
from fedshield.plan import compute_plan, effective_samples


def test_the_split_declares_each_silos_training_size_and_weights_follow_it():
    split = load_benchmark("federation_split")
    cfg = split.config(rounds=1)
    declared = {s.name: s.samples for s in cfg.silos}
    assert declared == {name: len(silo_split(cfg, name).train) for name in split.SILOS}
    assert len(set(declared.values())) > 1, "the silos differ in size"
    weights, _ = compute_plan(cfg, effective_samples(cfg, declared), {})
    uncapped = {name: n / sum(declared.values()) for name, n in declared.items()}
    assert max(uncapped.values()) <= cfg.aggregation.max_weight  # no cap in play: weights are the sample shares
    assert weights == pytest.approx(uncapped)
