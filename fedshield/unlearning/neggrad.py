"""NegGrad baselines, same engine path, student and step budget as E2URec.

Pure NegGrad ascends the cross-entropy on D_f. The E2URec authors' NegGrad (``retain`` given)
minimises ``CE(D_r batch) - forget_weight * CE(D_f batch)`` (their weight: 0.5): it keeps
learning the retained data while it forgets, the stronger baseline to beat.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..config import LoraSpec, TrainingSpec
from ..learning.model import answer_ids, last_token_logits
from ..learning.training import train_steps
from ..updates import VectorLayout, lora_parameters
from ..workloads.recommendation import Example
from .batches import epoch_batches
from .current import adapter_student, add_lora, current_model
from .e2urec import StudentKind, check_sets
from .engine import unlearning_engine
from .fold import fold_into_adapter, unfolded_adapter
from .losses import answer_cross_entropy
from .result import UnlearningResult
from .spec import UnlearningSpec


def neg_grad(
    base_path: str | Path, lora: LoraSpec, adapter: Mapping[str, torch.Tensor], layout: VectorLayout,
    forget: Sequence[Example], spec: UnlearningSpec = UnlearningSpec(), training: TrainingSpec = TrainingSpec(),
    keep_model: bool = False, retain: Sequence[Example] | None = None, forget_weight: float = 0.5,
    student: StudentKind = "adapter",
) -> UnlearningResult:
    """``spec.steps`` steps of NegGrad (pure ascent on D_f, or the authors' form when ``retain`` is given).

    ``losses`` are the ascended forget-set CE (pure) or the combined loss (the authors' form).
    """
    check_sets(forget, retain)
    start, cpu = time.perf_counter(), time.process_time()
    if student == "adapter":
        net, tokenizer = adapter_student(base_path, lora, adapter)
    else:
        model, tokenizer = current_model(base_path, lora, adapter)
        net = add_lora(model, spec, lora, seed=spec.seed)
    yes, no = answer_ids(tokenizer)
    engine = unlearning_engine(net, training, spec.learning_rate, spec.batch_size)
    forget_batches = epoch_batches(len(forget), spec.batch_size, spec.seed)
    retain_batches = epoch_batches(len(retain), spec.batch_size, spec.seed + 2) if retain else None

    def ce(examples: Sequence[Example], idx: list[int]) -> torch.Tensor:
        logits = last_token_logits(engine, tokenizer, [examples[i].prompt for i in idx])[:, [yes, no]]
        return answer_cross_entropy(logits, torch.tensor([examples[i].label for i in idx]))

    def step_loss(step: int) -> torch.Tensor:
        forget_ce = ce(forget, next(forget_batches))
        if retain_batches is None or retain is None:
            return -forget_ce
        return ce(retain, next(retain_batches)) - forget_weight * forget_ce

    raw = train_steps(engine, spec.steps, step_loss)
    losses = raw if retain else [-x for x in raw]
    if student == "adapter":
        folded = unfolded_adapter(lora_parameters(net), layout)
    else:
        folded = fold_into_adapter(adapter, lora.alpha / lora.r, lora_parameters(net), spec.lora_alpha / spec.rank, layout)
    method = "neggrad_paper" if retain else "neggrad"
    stats = {"forget_records": len(forget), "retain_records": len(retain or ()), "student": student,
             "fold_error_max": max(folded.errors.values(), default=0.0), "cpu_seconds": time.process_time() - cpu,
             "trainable_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad)}
    return UnlearningResult(method, folded, losses, time.perf_counter() - start, stats, net if keep_model else None)
