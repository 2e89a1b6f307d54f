"""E2URec's forgetting teacher, a pure function on logits."""

from __future__ import annotations

import torch


def forgetting_teacher(current: torch.Tensor, augmented: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """``v_f = v - alpha * ReLU(v_aug - v)``, elementwise.

    ``current`` (v) are the current model's logits, ``augmented`` (v_aug) those of the model
    that was fine-tuned further on the forget set. Whatever that extra exposure pushed up is
    pushed down by ``alpha`` times as much; what it pushed down is left alone.
    """
    if current.shape != augmented.shape:
        raise ValueError(f"logit shapes differ: {tuple(current.shape)} vs {tuple(augmented.shape)}")
    return current - alpha * torch.relu(augmented - current)
