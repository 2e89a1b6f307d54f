"""Settings of one unlearning run (pydantic, so a CRD can be generated from them later)."""

from __future__ import annotations

from pydantic import Field

from ..config import Strict


class UnlearningSpec(Strict):
    """E2URec defaults (alpha, beta, lr, batch) from the paper; step counts sized for the demo model."""

    alpha: float = Field(2.0, ge=0, description="Forgetting teacher: v_f = v - alpha * ReLU(v_aug - v).")
    beta: float = Field(0.4, ge=0, le=1, description="Weight of the forget-set KL; 1 - beta weighs the retained-set terms.")
    steps: int = Field(30, ge=1, description="Optimiser steps of the student (NegGrad gets the same number).")
    augment_steps: int = Field(20, ge=1, description="Optimiser steps of the augmented model on the forget set.")
    learning_rate: float = Field(1e-3, gt=0, description="Student (and NegGrad) learning rate.")
    augment_learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    rank: int = Field(8, ge=1, le=256, description="Rank of the student's (and the augmented model's) new LoRA.")
    lora_alpha: int = Field(16, ge=1)
    target_modules: tuple[str, ...] | None = Field(None, description="Default: the federation's LoRA targets (needed to fold).")
    seed: int = 0
