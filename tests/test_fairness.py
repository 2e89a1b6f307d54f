import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


_LOSS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=0, max_value=1e300))


@settings(max_examples=300, deadline=None)
@given(losses=st.dictionaries(st.sampled_from("abcdef"), _LOSS, min_size=1, max_size=6), round=st.integers(0, 10**9),
       alpha=st.floats(1e-6, 10), beta=st.floats(1e-6, 1000), temperature=st.floats(1e-300, 1000))
def test_pplr_warmup_weights_are_finite_and_bounded_for_any_input(losses, round, alpha, beta, temperature):
    """Tiny temperatures, huge losses, late rounds: no overflow, no NaN, no 0 ** p; tanh(alpha) <= w <= 1; order kept."""
    from fedshield.fairness import _clean_losses, warmup_weights

    with np.errstate(over="raise", invalid="raise", divide="raise"):
        weights = warmup_weights(losses, round=round, alpha=alpha, beta=beta, temperature=temperature)
    if not _clean_losses(losses):
        assert weights == {}
        return
    assert set(weights) == set(losses)
    assert all(math.isfinite(w) and math.tanh(alpha) - 1e-12 <= w <= 1.0 for w in weights.values())
    known = _clean_losses(losses)
    for a in known:
        for b in known:
            if known[a] < known[b]:
                assert weights[a] >= weights[b] - 1e-12  # a higher loss never mixes in more of the others


def test_pplr_warmup_weights_match_the_naive_formula_where_it_is_finite_and_equal_losses_at_round_zero():
    from fedshield.fairness import round_warmup_weights, warmup_weights

    losses = {"a": 0.3, "b": 0.9, "c": 0.5}
    z = np.exp(np.array([0.3, 0.9, 0.5]) / 0.5)
    soft = z / z.sum()
    naive = np.tanh(0.7 / soft ** (3 / 2.0))
    got = warmup_weights(losses, round=2, beta=2.0, temperature=0.5)
    assert [got[n] for n in "abc"] == pytest.approx(list(naive), rel=1e-12)
    equal = round_warmup_weights({}, ["a", "b", "c"], round=0)
    assert equal == pytest.approx({n: math.tanh(0.7 * 3) for n in "abc"})  # l = 1/3 each
    assert round_warmup_weights({"a": 0.2}, ["a", "b"], round=1) == warmup_weights({"a": 0.2, "b": None}, round=1)
