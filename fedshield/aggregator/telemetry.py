"""The aggregator's Prometheus gauges and counters, set from its round state.

Gauges are derived from persisted state, so a restarted aggregator exports the same
values again; counters and histograms count what this process saw (Prometheus'
``rate``/``increase`` handle the reset at a restart).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .. import metrics
from ..fairness import fairness_indices


def publish_plan(round: int, rounds_total: int, weights: Mapping[str, float], lr_scales: Mapping[str, float],
                 expected: Iterable[str], reporting: int) -> None:
    """The open round: its number, plan and how many of the expected silos have uploaded."""
    metrics.CURRENT_ROUND.set(round)
    metrics.ROUNDS_PLANNED.set(rounds_total)
    metrics.SILOS_EXPECTED.set(len(list(expected)))
    metrics.SILOS_REPORTING.set(reporting)
    for silo, weight in weights.items():
        metrics.AGGREGATION_WEIGHT.labels(silo).set(weight)
    for silo, scale in lr_scales.items():
        metrics.LR_SCALE.labels(silo).set(scale)


def publish_silos(silos: Iterable[str], withdrawn: Iterable[str]) -> None:
    """Withdrawal flags; every configured silo gets its series (a missed-round count of 0 is data, not absence)."""
    gone = set(withdrawn)
    for silo in silos:
        metrics.SILO_WITHDRAWN.labels(silo).set(1 if silo in gone else 0)
        metrics.STRAGGLER_ROUNDS.labels(silo)


def publish_reports(reports: Mapping[str, Mapping], expected: Iterable[str], contributors: Iterable[str]) -> None:
    """What silos reported with the last closed round: validation metrics, fairness over them, epsilon, stragglers."""
    scores = {s: m["val_score"] for s, m in reports.items() if m.get("val_score") is not None}
    for silo, m in reports.items():
        if m.get("val_score") is not None:
            metrics.REPORTED_SCORE.labels(silo).set(m["val_score"])
        if m.get("val_loss") is not None:
            metrics.REPORTED_LOSS.labels(silo).set(m["val_loss"])
        if m.get("epsilon") is not None:
            metrics.EPSILON_SPENT.labels(silo, m.get("epsilon_unit") or "unknown").set(m["epsilon"])
    if scores:
        indices = fairness_indices(scores)
        metrics.FAIRNESS_JAIN.set(indices["jain"])
        metrics.FAIRNESS_GAP.set(indices["gap"])
        for silo in scores:
            metrics.FAIRNESS_WORST.labels(silo).set(1 if silo == indices["worst_silo"] else 0)
    metrics.STRAGGLERS.set(len(set(expected) - set(contributors)))


def observe_close(duration_s: float, aggregate_s: float, aggregate_bytes: int, missing: Iterable[str]) -> None:
    """Counters and histograms of one round this process closed."""
    metrics.ROUNDS_CLOSED.inc()
    metrics.ROUND_DURATION.observe(duration_s)
    metrics.AGGREGATE_SECONDS.observe(aggregate_s)
    metrics.AGGREGATE_BYTES.set(aggregate_bytes)
    for silo in missing:
        metrics.STRAGGLER_ROUNDS.labels(silo).inc()


def publish_unlearnings(records: list[dict], closed_rounds: int) -> None:
    """The unlearning ledger (store rows) as gauges, and the global adapter's version."""
    metrics.ADAPTER_VERSION.set(closed_rounds + len(records))
    for r in records:
        silo = r["silo"]
        mine = [x for x in records if x["silo"] == silo]
        metrics.UNLEARNINGS.labels(silo).set(len(mine))
        metrics.UNLEARNED_USERS.labels(silo).set(sum(x["audit"]["users_count"] for x in mine))
        metrics.UNLEARNING_SECONDS.labels(silo).set(mine[-1]["audit"]["seconds"])
        metrics.UNLEARNING_TIMESTAMP.labels(silo).set(mine[-1]["received_at"])
