import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.crypto import CkksParams, PackingParams
from fedshield.crypto.packing import dequantise, pack, quantise, unpack

CKKS = CkksParams()


@pytest.mark.parametrize("digits", [1, 2, 3])
@given(data=st.data())
@settings(max_examples=30, deadline=None)
def test_packed_digit_sums_unpack_exactly(digits, data):
    packing = PackingParams(digits_per_slot=digits, max_silos=8)
    levels, radix = packing.levels(CKKS), packing.radix(CKKS)
    silos = data.draw(st.integers(1, 8))
    n = data.draw(st.integers(1, 300))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(silos))
    ints = [np.rint(rng.uniform(-1, 1, n) * levels * w).astype(np.int64) for w in weights]
    summed_slots = sum(pack(i, digits, radix, slots=16) for i in ints)
    assert np.abs(summed_slots).max() < 2.0 ** CKKS.payload_bits
    assert np.array_equal(unpack(summed_slots, digits, radix, n), sum(ints))


def test_quantise_clips_to_bound_and_round_trips_within_half_a_step():
    packing = PackingParams()
    step = packing.step(CKKS)
    values = np.array([-1.0, -packing.value_bound, -1e-3, 0.0, 2.5e-4, packing.value_bound, 3.0])
    ints = quantise(values, 0.5, packing.value_bound, step)
    back = dequantise(ints, 0.5, step)
    clipped = np.clip(values, -packing.value_bound, packing.value_bound)
    assert np.all(np.abs(back - clipped) <= step / 0.5 / 2 + 1e-15)
    assert np.abs(ints).max() <= packing.levels(CKKS) * 0.5 + 0.5


@pytest.mark.parametrize("weight", [0.0, -0.1, 1.5])
def test_weights_outside_unit_interval_are_refused(weight):
    with pytest.raises(ValueError, match="weight"):
        quantise(np.zeros(3), weight, 1.0, 0.1)


def test_too_many_digits_for_the_silo_count_is_refused():
    with pytest.raises(ValueError, match="levels"):
        PackingParams(digits_per_slot=4, max_silos=1024).step(CKKS)


def test_stochastic_rounding_is_unbiased_and_stays_within_one_step():
    rng = np.random.default_rng(0)
    values = np.full(200_000, 0.3)
    ints = quantise(values, 1.0, 1.0, 1.0, rng)
    assert set(np.unique(ints).tolist()) == {0, 1}
    assert abs(ints.mean() - 0.3) < 0.005
    signed = quantise(np.array([-2.7, 2.7] * 1000), 1.0, 5.0, 1.0, rng)
    assert set(np.unique(signed).tolist()) == {-3, -2, 2, 3}


@pytest.mark.parametrize("digits", [2, 3, 4])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_extreme_uploads_of_max_silos_sum_exactly_under_real_ckks(digits, rounding):
    """Every silo at +-value_bound, max_silos of them: the decrypted digit sums carry into no neighbour."""
    from fedshield.crypto import EncryptedSum, EnvelopeReader, create_keys, decrypt_envelope, encrypt_update

    keys = create_keys()
    packing = PackingParams(digits_per_slot=digits, max_silos=16, rounding=rounding)
    silos, n = packing.max_silos, 3 * 4096 * digits // 2
    weights = np.random.default_rng(digits).dirichlet(np.ones(silos)) * (1 - 1e-12)
    total = EncryptedSum(keys.public(), 0, n, packing=packing)
    expected = np.zeros(n)
    sign = np.where(np.arange(n) % 3 == 0, -1.0, 1.0)
    for i, w in enumerate(weights):
        values = sign * packing.value_bound * (1.0 if i % 2 else 0.999)
        enc = encrypt_update(keys, values, weight=float(w), round=0, silo=f"s-{i}", packing=packing,
                             rng=np.random.default_rng(i))
        total.add(EnvelopeReader.from_bytes(enc.data))
        expected += enc.sent * w
    step = packing.step(keys.params)
    decrypted = decrypt_envelope(keys, EnvelopeReader.from_bytes(total.to_bytes()))
    assert np.array_equal(np.rint(decrypted * total.weight_sum / step), np.rint(expected / step))
    assert np.abs(np.rint(expected / step)).max() >= 0.99 * packing.levels(keys.params)  # at the edge of the digit range
