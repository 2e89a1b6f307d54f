import json

import numpy as np
import pytest
import tenseal as ts

from fedshield.cli import main
from fedshield.crypto import (
    ChecksumError,
    CkksParams,
    EnvelopeReader,
    FormatError,
    SecretKeyMissingError,
    decrypt_envelope,
    encrypt_update,
    keys_from_bytes,
    load_keys,
)
from fedshield.crypto.compact import expand


def test_public_keys_share_fingerprint_but_not_secret(keys, public_keys, other_keys):
    assert keys.has_secret_key and not public_keys.has_secret_key
    assert public_keys.fingerprint == keys.fingerprint
    assert other_keys.fingerprint != keys.fingerprint


def test_public_context_cannot_decrypt(keys, public_keys):
    upload = encrypt_update(public_keys, np.full(10, 1e-3), weight=1.0, round=0, silo="a")
    with pytest.raises(SecretKeyMissingError):
        decrypt_envelope(public_keys, EnvelopeReader.from_bytes(upload.data))
    # Below our API too: TenSEAL itself refuses without a secret key.
    record = next(EnvelopeReader.from_bytes(upload.data).ciphertexts())
    blob = expand(record, public_keys.params.slots, 2.0**public_keys.params.scale_bits)
    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector_from(public_keys.context, blob).decrypt()
    assert np.allclose(decrypt_envelope(keys, EnvelopeReader.from_bytes(upload.data)), 1e-3, atol=1e-7)


def test_key_files_round_trip_and_public_file_has_no_secret(keys, tmp_path):
    assert main(["keys", "create", "--out", str(tmp_path)]) == 0
    secret = load_keys(tmp_path / "secret.ckks")
    public = load_keys(tmp_path / "public.ckks")
    assert secret.has_secret_key and not public.has_secret_key
    assert secret.fingerprint == public.fingerprint
    assert (tmp_path / "secret.ckks").stat().st_mode & 0o077 == 0
    assert public.to_bytes() == keys_from_bytes(public.to_bytes()).to_bytes()


def test_cli_refuses_to_overwrite_a_key_set(tmp_path, capsys):
    assert main(["keys", "create", "--out", str(tmp_path)]) == 0
    fingerprint = json.loads(capsys.readouterr().out)["fingerprint"]
    assert main(["keys", "create", "--out", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err
    assert load_keys(tmp_path / "public.ckks").fingerprint == fingerprint


def test_corrupted_key_file_is_refused(keys):
    data = bytearray(keys.public().to_bytes())
    data[len(data) // 2] ^= 0x01
    with pytest.raises(ChecksumError):
        keys_from_bytes(bytes(data))
    with pytest.raises(FormatError, match="magic"):
        keys_from_bytes(b"NOPE" + bytes(data[4:]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"poly_degree": 4096, "coeff_mod_bits": (60, 60)}, "128-bit security"),
        ({"coeff_mod_bits": (60,)}, "special prime"),
        ({"poly_degree": 3000}, "poly_degree"),
        ({"scale_bits": 55}, "scale_bits"),
    ],
)
def test_insecure_or_unusable_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CkksParams(**kwargs)
