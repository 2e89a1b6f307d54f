"""A silo's own check of a published unlearning before it touches its model (it trusts neither uploader nor aggregator)."""

from __future__ import annotations

import numpy as np

from ..config import FederationConfig
from ..crypto.params import PackingParams


class UnlearningRefused(ValueError):
    """A published unlearning outside what the run's spec allows: not applied."""


def check_unlearning(config: FederationConfig, packing: PackingParams, weight: float, delta: np.ndarray) -> None:
    """Refuse a replacement not packed as the spec says, not of weight 1, or moving a coordinate past the spec's bound."""
    expected = config.unlearning_packing()
    if packing != expected:
        raise UnlearningRefused(f"packing: the unlearning is packed as {packing.model_dump()}, the run's spec says {expected.model_dump()}")
    if not abs(weight - 1.0) <= 1e-9:
        raise UnlearningRefused(f"weight: a replacement is weighted 1, this one {weight}")
    largest = float(np.max(np.abs(delta))) if delta.size else 0.0
    if not np.all(np.isfinite(delta)) or largest > config.privacy.unlearning_bound * (1 + 1e-9):
        raise UnlearningRefused(f"the unlearning moves a coordinate by {largest:g}, over the spec's bound "
                                f"{config.privacy.unlearning_bound:g}")
