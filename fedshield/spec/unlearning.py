"""Settings of one unlearning run (E2URec): the `fedshield unlearn` flags and the FederatedUnlearning CR's settings alike."""

from __future__ import annotations

from pydantic import Field

from .base import Spec


class UnlearningSpec(Spec):
    """E2URec defaults (alpha, beta, lr, batch) from the paper; step counts sized for the demo model."""

    alpha: float = Field(2.0, ge=0, le=100, description="E2URec forgetting teacher: v_f = v - alpha * ReLU(v_aug - v).")
    beta: float = Field(0.4, ge=0, le=1, description="Weight of the forget-set KL; 1 - beta weighs the retained-set terms.")
    steps: int = Field(30, ge=1, le=100000, description="Optimiser steps of the E2URec student (NegGrad gets the same number).")
    augment_steps: int = Field(20, ge=1, le=100000, description="Optimiser steps of the augmented model on the forget set.")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="Student (and NegGrad) learning rate.")
    augment_learning_rate: float = Field(1e-3, gt=0, le=1, description="Learning rate of the augmented model.")
    batch_size: int = Field(16, ge=1, le=4096, description="Micro-batch size of the student and the augmented model.")
    rank: int = Field(8, ge=1, le=256, description="Rank of the student's (and the augmented model's) new LoRA.")
    lora_alpha: int = Field(16, ge=1, le=4096, description="LoRA scaling numerator of that new LoRA.")
    target_modules: tuple[str, ...] | None = Field(None, min_length=1, max_length=64,
                                                   description="Modules of that new LoRA (default: the federation's LoRA targets, needed to fold).")
    seed: int = Field(0, description="Seed of the student's initialisation and batches.")
