"""Time to compute every manifest and the status of a 50-silo FederatedFinetune (pure reconcile logic).

Prints one JSON object: {"silos": 50, "reconcile_s": .., "manifests": ..}. Target: <= 1 s.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

from fedshield.api.models import FederatedFinetuneSpec
from fedshield.operator.manifests import Owner, desired_children
from fedshield.operator.status import Observed, compute_status
from fedshield.wire.messages import RoundPlan, RoundSummary, Status, StatusSummary, UploadMetadata

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "federatedfinetune.yaml"


def fifty_silo_cr(silos: int = 50) -> dict:
    raw = yaml.safe_load(EXAMPLE.read_text())
    template = raw["spec"]["silos"][0]
    raw["spec"]["silos"] = [dict(template, name=f"org-{i}", namespace=f"org-{i}") for i in range(silos)]
    return raw


def aggregator_status(names: list[str], rounds: int) -> Status:
    """What an aggregator of ``names`` answers after ``rounds`` closed rounds (one page of them)."""
    closed = [RoundSummary(round=r, contributors=names, weight_sum=1.0, upload_bytes={}, aggregate_bytes=0, aggregate_s=0.0, round_s=0.0,
                           metadata={n: UploadMetadata(samples=1, val_auc=0.6 + i / 1000) for i, n in enumerate(names)})
              for r in range(rounds)]
    plan = RoundPlan(state="open", round=rounds, rounds_total=rounds + 1, pruning=0.9, explore_share=0.1)
    summary = StatusSummary(rounds_closed=rounds, last_round={n: rounds - 1 for n in names}, fairness_gap=round((len(names) - 1) / 1000, 4))
    return Status(plan=plan, joined={}, uploaded=[], closed=closed, summary=summary)


def main(silos: int = 50, repeats: int = 5) -> dict:
    raw = fifty_silo_cr(silos)
    owner = Owner(raw["metadata"]["name"], raw["metadata"]["namespace"], "00000000-0000-0000-0000-000000000000")
    names = [s["name"] for s in raw["spec"]["silos"]]
    observed = Observed(
        jobs={n: {"status": {"active": 1}} for n in names}, aggregator_ready=True,
        aggregator=aggregator_status(names, rounds=20),
    )
    timings, status = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        spec = FederatedFinetuneSpec.model_validate(raw["spec"])  # parse + validate, as every reconcile does
        children = desired_children(owner, spec)
        status = compute_status(spec, observed, status, "2026-11-23T00:00:00Z", 1)
        timings.append(time.perf_counter() - start)
    return {"silos": silos, "reconcile_s": round(max(timings), 4), "reconcile_s_median": round(sorted(timings)[len(timings) // 2], 4),
            "manifests": len(children)}


if __name__ == "__main__":
    print(json.dumps(main()))
    sys.exit(0)
