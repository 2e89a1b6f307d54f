import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.config import DPSpec, FederationConfig, PrivacySpec, SiloSpec
from fedshield.privacy import Budget, clip, epsilon, noise_for_epsilon, privatise


@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=200), st.floats(1e-3, 10))
@settings(max_examples=200, deadline=None)
def test_clipped_norm_never_exceeds_c(values, c):
    out = clip(np.array(values), c)
    assert np.linalg.norm(out) <= c * (1 + 1e-12)
    if np.linalg.norm(values) <= c:
        assert np.array_equal(out, values)


@pytest.mark.parametrize("sigma, c", [(0.5, 1.0), (1.4, 0.1), (4.8, 2.0)])
def test_noise_std_matches_sigma_times_c(sigma, c):
    zero = np.zeros(200_000)
    noise = privatise(zero, c, sigma, np.random.default_rng(0))
    assert abs(noise.std() / (sigma * c) - 1) < 0.05
    assert abs(noise.mean()) < 0.05 * sigma * c


def test_noise_comes_from_fresh_entropy_by_default():
    assert not np.array_equal(privatise(np.zeros(10), 1.0, 1.0), privatise(np.zeros(10), 1.0, 1.0))


@pytest.mark.parametrize("sigma, rounds, delta", [(0.8, 1, 1e-5), (1.0, 10, 1e-5), (1.43, 5, 1e-5), (4.8, 5, 1e-6), (2.0, 100, 1e-5), (10.0, 1000, 1e-7)])
def test_epsilon_equals_the_librarys(sigma, rounds, delta):
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), rounds))
    assert epsilon(sigma, rounds, delta) == pytest.approx(accountant.get_epsilon(delta), rel=1e-12)


@pytest.mark.parametrize("target", [2.0, 8.0])
def test_noise_is_solved_for_a_target_epsilon(target):
    sigma = noise_for_epsilon(target, 5, 1e-5)
    assert epsilon(sigma, 5, 1e-5) <= target + 1e-6
    assert epsilon(sigma * 0.99, 5, 1e-5) > target


def test_budget_stops_before_exceeding():
    budget = Budget(1.0, 1.0, 1e-5, epsilon_budget=epsilon(1.0, 3, 1e-5))
    assert budget.allows(3) and not budget.allows(4)


def test_config_solves_sigma_widens_packing_and_honours_a_silos_own_budget():
    config = FederationConfig(rounds=5, silos=(SiloSpec(name="a"), SiloSpec(name="b", epsilon_budget=1.0)),
                              privacy=PrivacySpec(dp=DPSpec(enabled=True, clip_norm=0.5, target_epsilon=8.0)))
    budget = config.dp_budget("a")
    assert budget.epsilon_budget == 8.0 and budget.spent(5) == pytest.approx(8.0, abs=1e-3)
    assert config.dp_budget("b").epsilon_budget == 1.0
    assert config.packing().value_bound == pytest.approx(4 * budget.noise_multiplier * 0.5)
    with pytest.raises(ValueError, match="exactly one"):
        DPSpec(enabled=True)
