"""A silo operator's side of unlearning approval: what is pending, the command that approves it, the approval itself.

An uploaded unlearning is only published once ``privacy.unlearning_approvals`` other silos have approved exactly its
bytes (their SHA-256); the aggregator refuses the uploader's own approval and any other digest (docs/security.md).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from ..wire.client import AggregatorClient
from ..wire.unlearning import PendingUnlearning


def approve_command(aggregator_url: str, version: int, sha256: str) -> str:
    """The ``fedshield approve`` command another silo runs, with its own silo name and credentials."""
    url = shlex.quote(aggregator_url)
    return (f"fedshield approve --aggregator {url} --silo <your-silo> --version {version} --sha256 {sha256} "
            "[--ca CA --cert CERT --key KEY | --ca CA --token-file TOKEN]")


def pending_table(pending: Sequence[PendingUnlearning]) -> str:
    """One line per pending unlearning: version, uploader, SHA-256, approvals so far, who asked and why."""
    if not pending:
        return "no unlearning is waiting for approval"
    rows = [("VERSION", "SILO", "SHA256", "APPROVALS", "USERS", "REQUESTED_BY", "REASON")]
    rows += [(str(p.version), p.silo, p.sha256, f"{len(p.approvals)}/{p.needed}" + (f" ({','.join(p.approvals)})" if p.approvals else ""),
              str(p.audit.users_count), p.audit.requested_by, p.audit.reason) for p in pending]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows)


def approve(client: AggregatorClient, silo: str, version: int, sha256: str) -> PendingUnlearning:
    """Approve, as ``silo``, exactly the bytes of pending unlearning ``version`` (AggregatorRefused on a refusal)."""
    return client.approve_unlearning(version, silo, sha256.lower())


def approve_all(clients: dict[str, AggregatorClient], version: int, sha256: str, needed: int) -> PendingUnlearning:
    """Approve with as many of ``clients`` (silo -> its own client) as ``needed``, in order, until published."""
    result = None
    for silo, client in list(clients.items())[:needed]:
        result = approve(client, silo, version, sha256)
        if result.published:
            return result
    if result is None or not result.published:
        raise RuntimeError(f"unlearning {version} needs {needed} approvals; only {len(clients)} other silos could approve")
    return result
