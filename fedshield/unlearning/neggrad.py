"""NegGrad baseline: gradient ascent on D_f with a new LoRA, same engine path and step budget as the student."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..config import LoraSpec, TrainingSpec
from ..learning.model import answer_ids, last_token_logits
from ..learning.training import train_steps
from ..updates import VectorLayout, lora_parameters
from ..workloads.recommendation import Example
from .batches import epoch_batches
from .current import add_lora, current_model
from .e2urec import check_sets
from .engine import unlearning_engine
from .fold import fold_into_adapter
from .losses import answer_cross_entropy
from .result import UnlearningResult
from .spec import UnlearningSpec


def neg_grad(
    base_path: str | Path, lora: LoraSpec, adapter: Mapping[str, torch.Tensor], layout: VectorLayout,
    forget: Sequence[Example], spec: UnlearningSpec = UnlearningSpec(), training: TrainingSpec = TrainingSpec(),
    keep_model: bool = False,
) -> UnlearningResult:
    """``spec.steps`` steps minimising ``-CE`` on D_f batches; folded like E2URec's student. Losses are the ascended CE."""
    check_sets(forget)
    start, cpu = time.perf_counter(), time.process_time()
    model, tokenizer = current_model(base_path, lora, adapter)
    yes, no = answer_ids(tokenizer)
    peft = add_lora(model, spec, lora, seed=spec.seed)
    engine = unlearning_engine(peft, training, spec.learning_rate, spec.batch_size)
    batches = epoch_batches(len(forget), spec.batch_size, spec.seed)

    def step_loss(step: int) -> torch.Tensor:
        idx = next(batches)
        logits = last_token_logits(engine, tokenizer, [forget[i].prompt for i in idx])[:, [yes, no]]
        return -answer_cross_entropy(logits, torch.tensor([forget[i].label for i in idx]))

    losses = [-x for x in train_steps(engine, spec.steps, step_loss)]
    folded = fold_into_adapter(adapter, lora.alpha / lora.r, lora_parameters(peft), spec.lora_alpha / spec.rank, layout)
    stats = {"forget_records": len(forget), "fold_error_max": max(folded.errors.values(), default=0.0),
             "cpu_seconds": time.process_time() - cpu}
    return UnlearningResult("neggrad", folded, losses, time.perf_counter() - start, stats, peft if keep_model else None)
