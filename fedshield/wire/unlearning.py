"""Messages of federated unlearning: what the forgetting silo declares, and the audit record the aggregator keeps."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from .messages import Message

SHA256_HEX = r"^[0-9a-f]{64}$"
AUDIT_HEADER = "x-fedshield-audit"  # the audit record travels as JSON in this header, the envelope as the body


class UnlearningAudit(Message):
    """Declared by the forgetting silo with its replacement adapter (plaintext, no personal data)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    requested_by: str = Field(min_length=1, max_length=200, description="Who asked (a person, ticket or system).")
    reason: str = Field("", max_length=500, description="Why, e.g. 'GDPR art. 17 request'.")
    users_count: int = Field(ge=1, le=10**9, description="How many users were forgotten.")
    users_sha256: str = Field(pattern=SHA256_HEX, description="SHA-256 of the sorted user ids, one per line (not anonymous: ids can be re-hashed).")
    method: str = Field("e2urec", max_length=40)
    requested_at: float = Field(ge=0, description="Unix time of the request.")
    seconds: float = Field(ge=0, description="Time the silo spent unlearning.")
    forget_auc_before: float | None = None
    forget_auc_after: float | None = None
    test_auc_before: float | None = None
    test_auc_after: float | None = None


class UnlearningRecord(Message):
    """One completed unlearning, as the aggregator keeps and serves it."""

    version: int = Field(description="0 for the federation's first unlearning, then 1, 2, ...")
    silo: str
    adapter_version_before: int = Field(description="Global adapter versions: one per closed round and per unlearning.")
    adapter_version_after: int
    sha256: str = Field(description="SHA-256 of the encrypted replacement as uploaded.")
    bytes: int
    received_at: float
    audit: UnlearningAudit


class ApprovalRequest(Message):
    """Another silo approves a pending unlearning: exactly these bytes (their SHA-256), nothing else."""

    sha256: str = Field(pattern=SHA256_HEX)


class PendingUnlearning(Message):
    """An unlearning uploaded but not published: it waits for ``needed`` approvals from other silos."""

    version: int
    silo: str
    sha256: str
    bytes: int
    received_at: float
    audit: UnlearningAudit
    approvals: list[str] = Field(description="Silos that approved it so far.")
    needed: int = Field(description="Approvals needed before the aggregator publishes it.")
    published: bool = False
