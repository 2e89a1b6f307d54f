"""Workloads by name: what a federation config (``workload: instruction``) will choose from.

A new workload is one class implementing ``workloads.base.Workload`` and one entry here.
"""

from __future__ import annotations

from ..config import FederationConfig
from ..workloads.base import Workload
from .instruction import InstructionWorkload
from .recommendation import RecommendationWorkload

WORKLOADS: dict[str, type[Workload]] = {w.name: w for w in (RecommendationWorkload, InstructionWorkload)}


def get_workload(name: str, **options) -> Workload:
    """The workload called ``name``, built with ``options`` (its dataclass fields)."""
    if name not in WORKLOADS:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(sorted(WORKLOADS))}")
    return WORKLOADS[name](**options)


def workload_for(config: FederationConfig) -> Workload:
    """The federation's workload with its options from the spec's ``data`` section."""
    data = config.data
    if config.workload == "instruction":
        return InstructionWorkload(val_fraction=data.val_fraction, seed=data.seed, max_label_tokens=data.max_label_tokens)
    return RecommendationWorkload(history=data.history, like_threshold=data.like_threshold, val_fraction=data.val_fraction,
                                  seed=data.seed, holdout=data.holdout)
