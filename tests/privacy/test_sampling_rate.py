"""DP-SGD's default Poisson sampling rate: an expected batch of four plain batches, at most every unit."""

import pytest

from fedshield.config import DPSpec, FederationConfig, PrivacySpec, SiloSpec, TrainingSpec
from fedshield.learning.dp_sgd import silo_dp_sgd
from fedshield.privacy import default_sampling_rate


def test_the_default_rate_is_four_batches_over_the_units_capped_at_one():
    assert default_sampling_rate(16, 640) == pytest.approx(0.1)
    assert default_sampling_rate(16, 64) == 1.0
    assert default_sampling_rate(16, 30) == 1.0  # fewer units than four batches: every unit in every step
    with pytest.raises(ValueError):
        default_sampling_rate(16, 0)


def _config(sampling_rate=None, unit="record"):
    dp = DPSpec(enabled=True, unit=unit, noise_multiplier=1.0, sampling_rate=sampling_rate)
    return FederationConfig(name="t", silos=(SiloSpec(name="a"), SiloSpec(name="b")), training=TrainingSpec(batch_size=4),
                            privacy=PrivacySpec(dp=dp))


def test_a_silo_uses_the_default_rate_unless_the_spec_sets_one():
    users = [f"u{i // 5}" for i in range(200)]  # 200 records of 40 users
    params, _ = silo_dp_sgd(_config(), "a", users)
    assert params.sampling_rate == pytest.approx(4 * 4 / 200)
    params, _ = silo_dp_sgd(_config(unit="user"), "a", users)
    assert params.sampling_rate == pytest.approx(4 * 4 / 40)
    params, _ = silo_dp_sgd(_config(sampling_rate=0.05), "a", users)
    assert params.sampling_rate == 0.05
