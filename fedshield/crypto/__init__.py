"""CKKS keys, packing and encryption of pruned LoRA updates (see docs/crypto.md)."""

from .cipher import EncryptedSum, EncryptedUpdate, decrypt_envelope, encrypt_update
from .envelope import EnvelopeHeader, EnvelopeReader
from .errors import (
    ChecksumError,
    CiphertextError,
    CryptoError,
    FormatError,
    KeyMismatchError,
    LengthMismatchError,
    RoundMismatchError,
    SecretKeyMissingError,
)
from .keys import Keys, create_keys, keys_from_bytes, load_keys, write_key_pair
from .params import CkksParams, PackingParams

__all__ = [
    "ChecksumError", "CiphertextError", "CkksParams", "CryptoError", "EncryptedSum", "EncryptedUpdate",
    "EnvelopeHeader", "EnvelopeReader", "FormatError", "KeyMismatchError", "Keys", "LengthMismatchError",
    "PackingParams", "RoundMismatchError", "SecretKeyMissingError", "create_keys", "decrypt_envelope",
    "encrypt_update", "keys_from_bytes", "load_keys", "write_key_pair",
]
