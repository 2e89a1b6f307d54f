"""The shared setting of the fairness and DP benchmarks: a non-IID 5-silo synthetic split."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

from rich.console import Console

with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed announces its accelerator on stdout at import
    import deepspeed  # noqa: F401

from fedshield.config import AggregationSpec, DataSpec, FederationConfig, PrivacySpec, SiloSpec, TrainingSpec
from fedshield.fairness import fairness_indices
from fedshield.local.demo import run_local, with_declared_samples

SILOS = ("silo-a", "silo-b", "silo-c", "silo-d", "silo-e")


def config(seed: int = 0, rounds: int = 5, **overrides) -> FederationConfig:
    """Five silos that differ in taste (Dirichlet 0.3 over genres) and size (52 down to 17 users).

    Each silo's sample count is declared (the size of its training split), so FedAvg weighs silos by their data
    rather than equally (equal weights are what an aggregator uses when nothing is declared)."""
    base = dict(
        name="bench", rounds=rounds, seed=seed, silos=tuple(SiloSpec(name=s) for s in SILOS),
        training=TrainingSpec(local_steps=20, batch_size=16), data=DataSpec(seed=seed),
        aggregation=AggregationSpec(min_silos=len(SILOS)), privacy=PrivacySpec(pruning=0.5),
    )
    base.update(overrides)
    return with_declared_samples(FederationConfig(**base))


def run(cfg: FederationConfig) -> dict:
    """Run the federation quietly; summarise the last round's per-silo AUC, and the untrained adapter's (``start_mean_auc``)."""
    with tempfile.TemporaryDirectory() as out:
        report = run_local(cfg, Path(out), console=Console(quiet=True))
    last = report["rounds"][-1]["silos"]
    idx = fairness_indices({s: row["score"] for s, row in last.items()})  # the recommendation score is AUC
    return {"mean_auc": round(idx["mean"], 4), "worst_auc": round(idx["worst"], 4), "gap": round(idx["gap"], 4),
            "jain": round(idx["jain"], 4), "worst_silo": idx["worst_silo"],
            "per_silo_auc": {s: round(row["score"], 4) for s, row in last.items()},
            "mean_auc_by_round": [round(r["mean_score"], 4) for r in report["rounds"]],
            "start_mean_auc": _rounded(report["summary"]["start_mean_score"]), "wall_s": round(report["summary"]["wall_s"], 1)}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
