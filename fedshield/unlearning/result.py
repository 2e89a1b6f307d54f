"""What an unlearning run hands back: the replacement adapter in the federation's layout, and a record."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .fold import FoldedAdapter


@dataclass
class UnlearningResult:
    method: str
    adapter: FoldedAdapter  # .shared: the new shared vector to encrypt and upload; .private: kept at the silo
    losses: list[float]  # per optimiser step of the unlearning LoRA
    seconds: float  # wall time, from loading the current model to the folded adapter
    stats: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None  # the unfolded network (current model + new LoRA), if asked for

    @property
    def shared(self) -> np.ndarray:
        return self.adapter.shared

    @property
    def private(self) -> dict[str, torch.Tensor]:
        return self.adapter.private
