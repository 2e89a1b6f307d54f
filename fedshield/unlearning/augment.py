"""E2URec's augmented model: the current model fine-tuned further on D_f, so it over-remembers it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..config import LoraSpec, TrainingSpec
from ..learning.training import train_local_stats
from ..workloads.recommendation import Example
from .current import add_lora, answer_logits, remove_lora
from .engine import unlearning_engine
from .spec import UnlearningSpec


def augmented_logits(
    model: torch.nn.Module, tokenizer, forget: Sequence[Example], spec: UnlearningSpec, lora: LoraSpec, training: TrainingSpec
) -> tuple[torch.Tensor, float]:
    """Train a throw-away LoRA on D_f with the silo's own training step; return its ``[N, 2]`` answer logits on D_f and its mean loss.

    The LoRA is removed afterwards: ``model`` is the frozen current model again.
    """
    augmented = add_lora(model, spec, lora, seed=spec.seed + 1)
    engine = unlearning_engine(augmented, training, spec.augment_learning_rate, spec.batch_size)
    stats = train_local_stats(engine, tokenizer, forget, spec.augment_steps, spec.batch_size, seed=spec.seed + 1)
    logits = answer_logits(augmented, tokenizer, forget)
    del engine
    remove_lora(augmented)
    return logits, stats.loss
