"""Refusals on the wire: one enum of error codes, each with its HTTP status, and the one error body.

The aggregator raises by code; the client parses the body back into the code, so both
sides match on :class:`ErrorCode` members, never on free strings.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from .messages import Message


class ErrorCode(StrEnum):
    """A stable, machine-readable reason for a refusal; :attr:`status` is the HTTP status it is sent with."""

    # who is calling
    UNAUTHENTICATED = "unauthenticated"
    UNKNOWN_SILO = "unknown_silo"
    IDENTITY_MISMATCH = "identity_mismatch"
    NOT_JOINED = "not_joined"
    # the request itself
    MALFORMED_REQUEST = "malformed_request"
    MALFORMED_AUDIT = "malformed_audit"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    BODY_TIMEOUT = "body_timeout"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    HTTP_ERROR = "http_error"
    # limits (answered with Retry-After)
    RATE_LIMITED = "rate_limited"
    UPLOAD_IN_PROGRESS = "upload_in_progress"
    TOO_MANY_UPLOADS = "too_many_uploads"
    # joining and reporting
    SAMPLES_ABOVE_DECLARED = "samples_above_declared"
    LAYOUT_MISMATCH = "layout_mismatch"
    ALREADY_JOINED = "already_joined"
    # rounds and their uploads
    UNKNOWN_ROUND = "unknown_round"
    ROUND_NOT_CLOSED = "round_not_closed"
    ROUND_CLOSED = "round_closed"
    WRONG_ROUND = "wrong_round"
    NOT_STARTED = "not_started"
    WITHDRAWN = "withdrawn"
    FEDERATION_FINISHED = "federation_finished"
    FEDERATION_STOPPED = "federation_stopped"
    TOO_FEW_CONTRIBUTORS = "too_few_contributors"
    CONFLICTING_UPLOAD = "conflicting_upload"
    STORAGE_FAILED = "storage_failed"
    # the envelope
    SILO_MISMATCH = "silo_mismatch"
    WRONG_WEIGHT = "wrong_weight"
    WRONG_PACKING = "wrong_packing"
    MALFORMED_ENVELOPE = "malformed_envelope"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    KEY_FINGERPRINT_MISMATCH = "key_fingerprint_mismatch"
    WRONG_LENGTH = "wrong_length"
    BAD_CIPHERTEXT = "bad_ciphertext"
    BAD_ENVELOPE = "bad_envelope"
    # unlearning
    UNKNOWN_UNLEARNING = "unknown_unlearning"
    FEDERATION_RUNNING = "federation_running"
    WRONG_VERSION = "wrong_version"
    SELF_APPROVAL = "self_approval"
    SHA256_MISMATCH = "sha256_mismatch"

    @property
    def status(self) -> int:
        """The HTTP status this code is sent with."""
        return STATUS[self]

    @property
    def retryable(self) -> bool:
        """Whether asking again later can succeed (a limit or a storage fault, not a refusal)."""
        return self in RETRYABLE


C = ErrorCode
STATUS: dict[ErrorCode, int] = {
    C.UNAUTHENTICATED: 401, C.UNKNOWN_SILO: 403, C.IDENTITY_MISMATCH: 403, C.NOT_JOINED: 403,
    C.MALFORMED_REQUEST: 422, C.MALFORMED_AUDIT: 422, C.PAYLOAD_TOO_LARGE: 413, C.BODY_TIMEOUT: 408,
    C.NOT_FOUND: 404, C.METHOD_NOT_ALLOWED: 405, C.HTTP_ERROR: 400,
    C.RATE_LIMITED: 429, C.UPLOAD_IN_PROGRESS: 429, C.TOO_MANY_UPLOADS: 503,
    C.SAMPLES_ABOVE_DECLARED: 422, C.LAYOUT_MISMATCH: 409, C.ALREADY_JOINED: 409,
    C.UNKNOWN_ROUND: 404, C.ROUND_NOT_CLOSED: 425, C.ROUND_CLOSED: 409, C.WRONG_ROUND: 409, C.NOT_STARTED: 409,
    C.WITHDRAWN: 409, C.FEDERATION_FINISHED: 409, C.FEDERATION_STOPPED: 409, C.TOO_FEW_CONTRIBUTORS: 403,
    C.CONFLICTING_UPLOAD: 409, C.STORAGE_FAILED: 503,
    C.SILO_MISMATCH: 400, C.WRONG_WEIGHT: 400, C.WRONG_PACKING: 400, C.MALFORMED_ENVELOPE: 400, C.CHECKSUM_MISMATCH: 400,
    C.KEY_FINGERPRINT_MISMATCH: 400, C.WRONG_LENGTH: 400, C.BAD_CIPHERTEXT: 400, C.BAD_ENVELOPE: 400,
    C.UNKNOWN_UNLEARNING: 404, C.FEDERATION_RUNNING: 409, C.WRONG_VERSION: 409, C.SELF_APPROVAL: 403, C.SHA256_MISMATCH: 409,
}
RETRYABLE = frozenset({C.RATE_LIMITED, C.UPLOAD_IN_PROGRESS, C.TOO_MANY_UPLOADS, C.STORAGE_FAILED, C.BODY_TIMEOUT, C.ROUND_NOT_CLOSED})
# The federation is over for this silo: an agent stops cleanly on these, it does not crash.
FEDERATION_OVER = frozenset({C.FEDERATION_FINISHED, C.FEDERATION_STOPPED})
del C


class ErrorBody(Message):
    """The body of every refusal."""

    error: ErrorCode = Field(description="A stable, machine-readable code.")
    detail: str = Field(description="What was wrong, for a person.")


def error_body(code: ErrorCode, detail: str) -> dict[str, Any]:
    """The JSON body of a refusal (what every error response of the aggregator carries)."""
    return ErrorBody(error=code, detail=detail).model_dump(mode="json")


def parse_error(status: int, payload: bytes | str) -> ErrorBody:
    """The refusal in a response body; a body that is no ErrorBody (a proxy's page, a newer code) is ``http_error``."""
    try:
        return ErrorBody.model_validate_json(payload)
    except ValueError:
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        return ErrorBody(error=ErrorCode.HTTP_ERROR, detail=f"{status}: {text[:500]}")
