"""A full ``wire.messages.Status`` from the few fields an operator test cares about, summarised as the aggregator does."""

from __future__ import annotations

from fedshield.aggregator.rounds import round_gap
from fedshield.wire.messages import RoundPlan, RoundSummary, Status, StatusSummary, UploadMetadata


def round_summary(partial: dict) -> RoundSummary:
    metadata = {silo: UploadMetadata(**{"samples": 1, **m}) for silo, m in (partial.get("metadata") or {}).items()}
    return RoundSummary(**{"contributors": [], "weight_sum": 1.0, "upload_bytes": {}, "aggregate_bytes": 0, "aggregate_s": 0.0,
                           "round_s": 0.0, **partial, "metadata": metadata})


def status_of(partial: dict | None) -> Status | None:
    """``partial`` (``plan`` and ``closed`` as far as given) as the aggregator's /v1/status would answer it; None stays None."""
    if partial is None:
        return None
    plan = RoundPlan(**{"state": "open", "round": 0, "rounds_total": 1, "pruning": 0.9, "explore_share": 0.1, **partial.get("plan", {})})
    closed = [round_summary(c) for c in partial.get("closed", [])]
    last_round = {silo: c.round for c in closed for silo in c.contributors}
    aucs = [m.val_score for m in closed[-1].metadata.values() if m.val_score is not None] if closed else []
    spent = [m for c in closed for m in c.metadata.values() if m.epsilon is not None]
    top = max(spent, key=lambda m: m.epsilon or 0.0) if spent else None
    by_silo = {silo: m.epsilon for c in closed for silo, m in c.metadata.items() if m.epsilon is not None}
    summary = StatusSummary(rounds_closed=len(closed), last_round=last_round, fairness_gap=round_gap(aucs),
                            max_epsilon=top.epsilon if top else None, epsilon_unit=top.epsilon_unit if top else None,
                            epsilon_by_silo=by_silo)
    return Status(plan=plan, joined={}, uploaded=[], closed=closed, summary=summary)
