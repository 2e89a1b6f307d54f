"""The operator's Prometheus metrics: how many resources it follows in which phase, and its own cost."""

from __future__ import annotations

from .. import metrics

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")
_phases: dict[tuple[str, str], str] = {}  # (kind, namespace/name) -> last phase seen


def observe_phase(kind: str, key: str, phase: str | None) -> None:
    """Record ``key``'s phase (None: it is gone) and export the counts per phase of ``kind``."""
    if phase is None:
        _phases.pop((kind, key), None)
    else:
        _phases[(kind, key)] = phase
    counts = {p: 0 for p in PHASES}
    for (k, _), p in _phases.items():
        if k == kind:
            counts[p] = counts.get(p, 0) + 1
    for p, n in counts.items():
        metrics.OPERATOR_RESOURCES.labels(kind, p).set(n)
