"""Errors raised by the crypto core. Every one names the problem it found."""


class CryptoError(ValueError):
    """Base class: an update, aggregate or key file that must not be used."""


class FormatError(CryptoError):
    """Bytes that are not a FedShield envelope: bad magic, version, header or truncation."""


class ChecksumError(CryptoError):
    """The envelope's checksum does not match its contents (corrupted or tampered)."""


class KeyMismatchError(CryptoError):
    """The envelope was made under another key set than the context at hand."""


class RoundMismatchError(CryptoError):
    """The envelope belongs to another round than the one expected."""


class LengthMismatchError(CryptoError):
    """The envelope holds another number of values or ciphertexts than expected."""


class CiphertextError(CryptoError):
    """A ciphertext inside the envelope could not be loaded under the context."""


class SecretKeyMissingError(CryptoError):
    """Decryption was asked of a context that holds no secret key."""
