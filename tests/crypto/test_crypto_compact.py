import numpy as np
import pytest
import tenseal as ts

from fedshield.crypto import CiphertextError
from fedshield.crypto.compact import HEAD_BYTES, compact, expand


@pytest.fixture(scope="module")
def vector(keys):
    values = np.random.default_rng(0).integers(-(2**39), 2**39, keys.params.slots).astype(np.float64)
    return values, ts.ckks_vector(keys.context, values).serialize()


def test_compact_is_lossless_and_a_sixteenth_smaller(keys, vector):
    values, blob = vector
    record = compact(blob)
    assert len(record) == HEAD_BYTES + 2 * keys.params.poly_degree * 15 // 2
    assert len(record) < len(blob) * 0.94
    restored = ts.ckks_vector_from(keys.context, expand(record, keys.params.slots, 2.0**keys.params.scale_bits))
    assert np.abs(np.asarray(restored.decrypt()) - values).max() < 0.5
    assert compact(expand(record, keys.params.slots, 2.0**keys.params.scale_bits)) == record


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda r: r[:-1], "bytes"),
        (lambda r: r[:10], "shorter"),
        (lambda r: r[:HEAD_BYTES - 8] + (12345).to_bytes(8, "little") + r[HEAD_BYTES:], "coefficients"),
    ],
)
def test_malformed_compact_records_are_refused(keys, vector, mangle, message):
    with pytest.raises(CiphertextError, match=message):
        expand(mangle(compact(vector[1])), keys.params.slots, 2.0**keys.params.scale_bits)


def test_non_tenseal_bytes_are_refused():
    with pytest.raises(CiphertextError):
        compact(b"\x12\x05hello")
