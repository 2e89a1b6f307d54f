import io
import json
import struct

import numpy as np
import pytest

from fedshield.crypto import (
    ChecksumError,
    CiphertextError,
    EncryptedSum,
    EnvelopeReader,
    FormatError,
    KeyMismatchError,
    LengthMismatchError,
    PackingParams,
    RoundMismatchError,
    decrypt_envelope,
    encrypt_update,
)
from fedshield.crypto.envelope import EnvelopeHeader, envelope_bytes

N = 20_000


def _uploads(keys, silos, n=N, round=1, seed=0):
    rng = np.random.default_rng(seed)
    updates = [rng.uniform(-1e-2, 1e-2, n) for _ in range(silos)]
    weights = rng.dirichlet(np.ones(silos))
    uploads = [
        encrypt_update(keys, x, weight=float(w), round=round, silo=f"silo-{i}") for i, (x, w) in enumerate(zip(updates, weights, strict=False))
    ]
    return updates, weights, uploads


@pytest.mark.parametrize("silos", [1, 3, 10])
def test_decrypted_weighted_sum_matches_plaintext(keys, public_keys, silos):
    updates, weights, uploads = _uploads(public_keys, silos)
    total = EncryptedSum(public_keys, round=1, count=N)
    for upload in uploads:
        total.add(EnvelopeReader.from_bytes(upload.data))
    result = decrypt_envelope(keys, EnvelopeReader.from_bytes(total.to_bytes()), round=1, count=N)
    expected = sum(w * x for w, x in zip(weights, updates, strict=False)) / weights.sum()
    assert np.abs(result - expected).max() <= 1e-6
    # `sent` is exactly what the aggregate counts: the sum of the sent values matches to float precision.
    sent = sum(w * u.sent for w, u in zip(weights, uploads, strict=False)) / weights.sum()
    assert np.abs(result - sent).max() <= 1e-12


def test_aggregate_of_a_subset_is_their_weighted_average(keys, public_keys):
    updates, weights, uploads = _uploads(public_keys, 4, n=500)
    total = EncryptedSum(public_keys, round=1, count=500)
    for upload in uploads[:2]:  # two silos missed the deadline
        total.add(EnvelopeReader.from_bytes(upload.data))
    result = decrypt_envelope(keys, EnvelopeReader.from_bytes(total.to_bytes()))
    expected = (weights[0] * updates[0] + weights[1] * updates[1]) / (weights[0] + weights[1])
    assert np.abs(result - expected).max() <= 1e-6
    assert total.header().contributors == ("silo-0", "silo-1")


def test_values_beyond_the_bound_are_clipped_and_reported_in_sent(keys):
    packing = PackingParams(value_bound=0.01)
    upload = encrypt_update(keys, np.array([0.5, -0.5, 0.001]), weight=1.0, round=0, silo="a", packing=packing)
    assert np.allclose(upload.sent, [0.01, -0.01, 0.001], atol=1e-8)
    assert np.allclose(decrypt_envelope(keys, EnvelopeReader.from_bytes(upload.data)), upload.sent, atol=1e-12)


def test_upload_size_falls_in_proportion_to_kept_values(public_keys):
    per_ct = PackingParams().values_per_ciphertext(public_keys.params)
    sizes = {k: len(encrypt_update(public_keys, np.zeros(k), weight=1.0, round=0, silo="a").data) for k in (per_ct, 10 * per_ct)}
    assert sizes[10 * per_ct] / sizes[per_ct] == pytest.approx(10, rel=0.01)
    assert sizes[10 * per_ct] / (10 * per_ct) < 15.1  # bytes per kept value: 30 B per slot, 2 values per slot


def test_aggregator_memory_is_one_upload_whatever_the_silo_count(public_keys):
    _, _, uploads = _uploads(public_keys, 10, n=3 * PackingParams().values_per_ciphertext(public_keys.params))
    total = EncryptedSum(public_keys, round=1, count=len(uploads[0].sent))
    for upload in uploads:
        total.add(EnvelopeReader.from_bytes(upload.data))
        assert len(total._sum) == 3  # a running sum of one upload's ciphertexts


# --- bad input: each a named error, and the running sum unchanged -------------------------


def _reframe(data: bytes, header_edit=None, records_edit=None) -> bytes:
    """Rebuild an envelope with an edited header or records and a *valid* checksum."""
    reader = EnvelopeReader.from_bytes(data)
    header = reader.header.model_dump(mode="json")
    records = list(reader.ciphertexts())
    if header_edit:
        header_edit(header)
    if records_edit:
        records = records_edit(records)
    out = io.BytesIO()
    from fedshield.crypto.framing import write_framed

    write_framed(out, b"FSHE", header, records)
    return out.getvalue()


@pytest.fixture(scope="module")
def round_state(keys, public_keys):
    _, _, uploads = _uploads(public_keys, 2, n=1000)
    total = EncryptedSum(public_keys, round=1, count=1000)
    total.add(EnvelopeReader.from_bytes(uploads[0].data))
    return total, uploads[1].data


def _bad_cases(keys, other_keys, good):
    other = encrypt_update(other_keys, np.zeros(1000), weight=0.1, round=1, silo="silo-9").data
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10
    return {
        "truncated": (good[: len(good) - 100], FormatError, "truncated"),
        "bit-flipped": (bytes(flipped), ChecksumError, "checksum"),
        "other key set": (other, KeyMismatchError, "key set"),
        "wrong round": (encrypt_update(keys, np.zeros(1000), weight=0.1, round=2, silo="silo-9").data, RoundMismatchError, "round 2"),
        "wrong length": (encrypt_update(keys, np.zeros(999), weight=0.1, round=1, silo="silo-9").data, LengthMismatchError, "999"),
        "header lies about count": (_reframe(good, lambda h: h.update(count=1001)), LengthMismatchError, "1001"),
        "ciphertext count mismatch": (_reframe(good, lambda h: h.update(n_ciphertexts=2)), FormatError, "ciphertexts"),
        "garbage ciphertext": (_reframe(good, records_edit=lambda r: [b"\x00" * 64]), CiphertextError, "ciphertext 0"),
        "duplicate silo": (_reframe(good, lambda h: h.update(silo="silo-0")), FormatError, "already"),
        "weights over one": (_reframe(good, lambda h: h.update(weight=1.0)), FormatError, "weights would sum"),
        "path trick in silo name": (_reframe(good, lambda h: h.update(silo="../etc")), FormatError, "DNS label"),
        "future format version": (_reframe(good, lambda h: h.update(format_version=2)), FormatError, "format_version"),
        "not an envelope": (b"hello world" * 10, FormatError, "magic"),
        "empty": (b"", FormatError, "truncated"),
    }


CASES = [
    "truncated", "bit-flipped", "other key set", "wrong round", "wrong length", "header lies about count",
    "ciphertext count mismatch", "garbage ciphertext", "duplicate silo", "weights over one",
    "path trick in silo name", "future format version", "not an envelope", "empty",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_upload_is_a_named_error_and_changes_nothing(keys, other_keys, round_state, case):
    total, good = round_state
    data, error, message = _bad_cases(keys, other_keys, good)[case]
    before = (list(total.contributors), total.weight_sum, total.to_bytes())
    with pytest.raises(error, match=message):
        total.add(EnvelopeReader.from_bytes(data))
    assert (list(total.contributors), total.weight_sum, total.to_bytes()) == before


def test_decrypt_checks_round_and_key_set(keys, other_keys):
    data = encrypt_update(keys, np.zeros(10), weight=1.0, round=3, silo="a").data
    with pytest.raises(RoundMismatchError):
        decrypt_envelope(keys, EnvelopeReader.from_bytes(data), round=4)
    with pytest.raises(KeyMismatchError):
        decrypt_envelope(other_keys, EnvelopeReader.from_bytes(data))


def test_envelope_is_self_describing(public_keys):
    data = encrypt_update(public_keys, np.zeros(5), weight=0.5, round=7, silo="bank-a", layout="abc").data
    magic, version, header_len = struct.unpack(">4sHI", data[:10])
    header = json.loads(data[10 : 10 + header_len])
    assert (magic, version) == (b"FSHE", 1)
    assert header["round"] == 7 and header["silo"] == "bank-a" and header["count"] == 5
    assert header["fingerprint"] == public_keys.fingerprint and header["layout"] == "abc"
    assert EnvelopeHeader.model_validate(header).n_ciphertexts == 1


def test_envelope_reader_streams_from_a_file(keys, tmp_path):
    upload = encrypt_update(keys, np.linspace(-1e-2, 1e-2, 50), weight=1.0, round=0, silo="a")
    path = tmp_path / "upload.fshe"
    path.write_bytes(upload.data)
    with EnvelopeReader.open(path) as reader:
        assert np.allclose(decrypt_envelope(keys, reader), upload.sent, atol=1e-12)
    assert envelope_bytes(EnvelopeReader.from_bytes(upload.data).header, list(EnvelopeReader.from_bytes(upload.data).ciphertexts())) == upload.data
