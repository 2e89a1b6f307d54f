"""E2URec at one silo: augmented model, two teachers, and a LoRA student.

The student is, by default, the federation's own adapter trained further (rank-preserving: same
rank and layout, no fold, no truncation). ``student="new_lora"`` trains a fresh LoRA on the merged
current model and folds it in by truncated SVD (``fold.py``), as before; its fold error is reported.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch

from ..config import LoraSpec, TrainingSpec
from ..updates import VectorLayout, lora_parameters
from ..workloads.recommendation import Example
from .augment import augmented_logits
from .current import adapter_student, add_lora, answer_logits, current_model
from .engine import unlearning_engine
from .fold import FoldedAdapter, fold_into_adapter, unfolded_adapter
from .result import UnlearningResult
from .spec import UnlearningSpec
from .student import train_student
from .teacher import forgetting_teacher

StudentKind = Literal["adapter", "new_lora"]  # the federation's adapter trained further, or a new LoRA folded in


def check_sets(forget: Sequence[Example], retain: Sequence[Example] | None = None) -> None:
    if not forget:
        raise ValueError("the forget set is empty: none of the users to forget has records here")
    if retain is not None and not retain:
        raise ValueError("the retained set is empty: nothing would remain to remember")


def distil(
    base_path: str | Path, lora: LoraSpec, adapter: Mapping[str, torch.Tensor], layout: VectorLayout, model: torch.nn.Module,
    tokenizer, forget: Sequence[Example], retain: Sequence[Example], forget_teacher: torch.Tensor, retain_teacher: torch.Tensor,
    spec: UnlearningSpec, training: TrainingSpec, student: StudentKind,
) -> tuple[FoldedAdapter, torch.nn.Module, list[float], int]:
    """Train the student on the two teachers' answer logits; returns (replacement adapter, student, losses, forget-only steps).

    ``model`` is the merged current model (consumed: the adapter student loads its own copy).
    """
    if student == "adapter":
        del model  # the student holds its own copy of the base, with the adapter unmerged
        net, tokenizer = adapter_student(base_path, lora, adapter)
    else:
        net = add_lora(model, spec, lora, seed=spec.seed)
    engine = unlearning_engine(net, training, spec.learning_rate, spec.batch_size)
    losses, forget_only = train_student(engine, tokenizer, forget, retain, forget_teacher, retain_teacher, spec)
    del engine
    if student == "adapter":
        folded = unfolded_adapter(lora_parameters(net), layout)
    else:
        folded = fold_into_adapter(adapter, lora.alpha / lora.r, lora_parameters(net), spec.lora_alpha / spec.rank, layout)
    return folded, net, losses, forget_only


def student_stats(folded: FoldedAdapter, net: torch.nn.Module, student: StudentKind, forget_only: int, cpu_start: float) -> dict:
    return {"forget_only_steps": forget_only, "fold_error_max": max(folded.errors.values(), default=0.0),
            "cpu_seconds": time.process_time() - cpu_start, "student": student,
            "trainable_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad)}


def unlearn(
    base_path: str | Path, lora: LoraSpec, adapter: Mapping[str, torch.Tensor], layout: VectorLayout,
    forget: Sequence[Example], retain: Sequence[Example], spec: UnlearningSpec = UnlearningSpec(),
    training: TrainingSpec = TrainingSpec(), keep_model: bool = False, student: StudentKind = "adapter",
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
    folded, net, losses, forget_only = distil(base_path, lora, adapter, layout, model, tokenizer, forget, retain, teacher, v_retain,
                                              spec, training, student)
    stats = {
        "forget_records": len(forget), "retain_records": len(retain), "augment_loss": augment_loss,
        **student_stats(folded, net, student, forget_only, cpu),
        "teacher_yes_shift": float((torch.softmax(teacher, -1)[:, 0] - torch.softmax(v_forget, -1)[:, 0]).mean()),
    }
    return UnlearningResult("e2urec", folded, losses, time.perf_counter() - start, stats, net if keep_model else None)


def bad_teacher(
    base_path: str | Path, lora: LoraSpec, adapter: Mapping[str, torch.Tensor], layout: VectorLayout,
    forget: Sequence[Example], retain: Sequence[Example], spec: UnlearningSpec = UnlearningSpec(),
    training: TrainingSpec = TrainingSpec(), keep_model: bool = False, student: StudentKind = "adapter",
) -> UnlearningResult:
    """Bad-T (Chundawat et al., 2023) with E2URec's student, loss and step budget: on D_f the student imitates an
    incompetent teacher (an untrained model's answer: Yes and No equally likely), on D_r the competent current model."""
    check_sets(forget, retain)
    start, cpu = time.perf_counter(), time.process_time()
    model, tokenizer = current_model(base_path, lora, adapter)
    v_retain = answer_logits(model, tokenizer, retain)
    incompetent = torch.zeros(len(forget), 2)
    folded, net, losses, forget_only = distil(base_path, lora, adapter, layout, model, tokenizer, forget, retain, incompetent,
                                              v_retain, spec, training, student)
    stats = {"forget_records": len(forget), "retain_records": len(retain), **student_stats(folded, net, student, forget_only, cpu)}
    return UnlearningResult("bad_teacher", folded, losses, time.perf_counter() - start, stats, net if keep_model else None)
