import numpy as np
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


def test_pplr_warmup_weights_slow_a_struggling_silo_toward_itself_and_tend_to_one():
    from fedshield.fairness import warmup_weights

    losses = {"a": 0.40, "b": 0.45, "c": 0.50}
    early, late = warmup_weights(losses, round=0), warmup_weights(losses, round=30)
    assert early["c"] < early["b"] < early["a"]  # the highest loss learns mostly from itself
    assert all(0 <= w <= 1 for w in early.values())
    assert all(late[n] >= early[n] for n in losses) and late["a"] > 0.6
    # the paper's formula, by hand: softmax(loss / 0.05), w = tanh(0.7 / l^((t+1)/beta))
    z = np.exp(np.array([0.40, 0.45, 0.50]) / 0.05)
    soft = z / z.sum()
    assert early["c"] == pytest.approx(float(np.tanh(0.7 / soft[2])))
    assert warmup_weights(losses, round=1, beta=5.0)["c"] == pytest.approx(float(np.tanh(0.7 / soft[2] ** (2 / 5))))
    assert warmup_weights({}, round=0) == {}


def test_pplr_personalised_mix_equals_the_papers_sum_over_the_other_silos():
    from fedshield.fairness import personalised_mix

    rng = np.random.default_rng(0)
    thetas = rng.normal(size=(4, 6))
    mean = thetas.mean(axis=0)
    w = 0.3
    by_hand = (thetas[1] + w * (thetas[0] + thetas[2] + thetas[3])) / (1 + 3 * w)
    assert np.allclose(personalised_mix(thetas[1], mean, w, 4), by_hand)
    assert np.allclose(personalised_mix(thetas[1], mean, 1.0, 4), mean)
    assert np.allclose(personalised_mix(thetas[1], mean, 0.0, 4), thetas[1])
