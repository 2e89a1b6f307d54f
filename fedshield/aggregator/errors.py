"""How the aggregator refuses: :class:`ApiError` by code, and the code of each crypto error."""

from __future__ import annotations

from ..crypto.errors import (
    ChecksumError,
    CiphertextError,
    CryptoError,
    FormatError,
    KeyMismatchError,
    LengthMismatchError,
    RoundMismatchError,
)
from ..wire.errors import ErrorCode

ENVELOPE_STATUS = 400  # a bad envelope is a bad request, whatever its code says about other requests
CRYPTO_CODES: dict[type[CryptoError], ErrorCode] = {
    FormatError: ErrorCode.MALFORMED_ENVELOPE,
    ChecksumError: ErrorCode.CHECKSUM_MISMATCH,
    KeyMismatchError: ErrorCode.KEY_FINGERPRINT_MISMATCH,
    RoundMismatchError: ErrorCode.WRONG_ROUND,
    LengthMismatchError: ErrorCode.WRONG_LENGTH,
    CiphertextError: ErrorCode.BAD_CIPHERTEXT,
}


class ApiError(Exception):
    """A refused request: a stable code, a message for a person, and the code's HTTP status (unless ``status`` says otherwise)."""

    def __init__(self, code: ErrorCode, detail: str, status: int | None = None, retry_after_s: int | None = None):
        super().__init__(detail)
        self.code, self.detail = ErrorCode(code), detail
        self.status = status if status is not None else self.code.status
        self.retry_after_s = retry_after_s  # sent as Retry-After (425 while a round is open)


def crypto_code(exc: CryptoError) -> ErrorCode:
    """The code of a crypto error (its nearest mapped class), ``bad_envelope`` for any other."""
    return next((CRYPTO_CODES[k] for k in type(exc).__mro__ if k in CRYPTO_CODES), ErrorCode.BAD_ENVELOPE)


def envelope_refused(exc: CryptoError) -> ApiError:
    """The refusal of an upload whose envelope the crypto core rejected (always 400)."""
    return ApiError(crypto_code(exc), str(exc), ENVELOPE_STATUS)
