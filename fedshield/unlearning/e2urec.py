"""E2URec at one silo: augmented model, two teachers, a student LoRA, folded into the global adapter."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..config import LoraSpec, TrainingSpec
from ..updates import VectorLayout, lora_parameters
from ..workloads.recommendation import Example
from .augment import augmented_logits
from .current import add_lora, answer_logits, current_model
from .engine import unlearning_engine
from .fold import fold_into_adapter
from .result import UnlearningResult
from .spec import UnlearningSpec
from .student import train_student
from .teacher import forgetting_teacher


def check_sets(forget: Sequence[Example], retain: Sequence[Example] | None = None) -> None:
    if not forget:
        raise ValueError("the forget set is empty: none of the users to forget has records here")
    if retain is not None and not retain:
        raise ValueError("the retained set is empty: nothing would remain to remember")


def unlearn(
    base_path: str | Path, lora: LoraSpec, adapter: Mapping[str, torch.Tensor], layout: VectorLayout,
    forget: Sequence[Example], retain: Sequence[Example], spec: UnlearningSpec = UnlearningSpec(),
    training: TrainingSpec = TrainingSpec(), keep_model: bool = False,
) -> UnlearningResult:
    """Forget D_f (``forget``) from the model ``base_path`` + ``adapter`` (every LoRA tensor by PEFT name).

    Returns the replacement adapter split by ``layout``: ``result.shared`` (same size and
    order as the federation's vector) and ``result.private``.
    """
    check_sets(forget, retain)
    start, cpu = time.perf_counter(), time.process_time()
    model, tokenizer = current_model(base_path, lora, adapter)
    v_forget = answer_logits(model, tokenizer, forget)  # the current model = the remembering teacher's logits too
    v_retain = answer_logits(model, tokenizer, retain)
    v_aug, augment_loss = augmented_logits(model, tokenizer, forget, spec, lora, training)
    teacher = forgetting_teacher(v_forget, v_aug, spec.alpha)
    student = add_lora(model, spec, lora, seed=spec.seed)
    engine = unlearning_engine(student, training, spec.learning_rate, spec.batch_size)
    losses, forget_only = train_student(engine, tokenizer, forget, retain, teacher, v_retain, spec)
    del engine
    folded = fold_into_adapter(adapter, lora.alpha / lora.r, lora_parameters(student), spec.lora_alpha / spec.rank, layout)
    stats = {
        "forget_records": len(forget), "retain_records": len(retain), "augment_loss": augment_loss,
        "forget_only_steps": forget_only, "fold_error_max": max(folded.errors.values(), default=0.0),
        "cpu_seconds": time.process_time() - cpu,
        "teacher_yes_shift": float((torch.softmax(teacher, -1)[:, 0] - torch.softmax(v_forget, -1)[:, 0]).mean()),
    }
    return UnlearningResult("e2urec", folded, losses, time.perf_counter() - start, stats, student if keep_model else None)
