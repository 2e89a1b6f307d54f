import pytest

from fedshield.fairness import fairness_indices, fedavg_weights, jain_index, loss_weights, lr_scales


def test_fedavg_weights_are_sample_shares():
    assert fedavg_weights({"a": 300, "b": 100}) == {"a": 0.75, "b": 0.25}


def test_loss_weights_favour_lagging_silos_and_q_zero_is_fedavg():
    samples, losses = {"a": 100, "b": 100}, {"a": 0.2, "b": 0.6}
    w = loss_weights(samples, losses, q=1.0)
    assert w["b"] > w["a"] and sum(w.values()) == pytest.approx(1.0)
    assert loss_weights(samples, losses, q=0.0) == fedavg_weights(samples)
    assert loss_weights(samples, {}, q=1.0) == fedavg_weights(samples)


def test_lr_scales_speed_up_lagging_silos_within_bounds():
    scales = lr_scales({"a": 0.1, "b": 0.5, "c": 10.0}, ["a", "b", "c", "d"])
    assert scales["a"] == 0.5 and scales["c"] == 2.0 and 0.5 <= scales["b"] <= 2.0 and scales["d"] == 1.0
    assert lr_scales({}, ["a"]) == {"a": 1.0}


def test_fairness_indices():
    assert jain_index([1, 1, 1]) == pytest.approx(1.0)
    assert jain_index([1, 0, 0]) == pytest.approx(1 / 3)
    idx = fairness_indices({"a": 0.6, "b": 0.8, "c": 0.7})
    assert idx["gap"] == pytest.approx(0.2) and idx["worst_silo"] == "a" and idx["mean"] == pytest.approx(0.7)
    assert idx["variance"] == pytest.approx(((0.1) ** 2 * 2) / 3)
