"""Training E2URec's student (a new LoRA on the current model) through the silo's DeepSpeed engine."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..learning.model import answer_ids, last_token_logits
from ..learning.training import train_steps
from ..workloads.recommendation import Example
from .batches import epoch_batches, steps_per_epoch
from .losses import student_loss
from .spec import UnlearningSpec


def train_student(
    engine, tokenizer, forget: Sequence[Example], retain: Sequence[Example],
    forget_teacher: torch.Tensor, retain_teacher: torch.Tensor, spec: UnlearningSpec,
) -> tuple[list[float], int]:
    """``spec.steps`` steps of the E2URec loss; returns the per-step losses and how many were forget-only.

    The first epoch over D_f (``ceil(|D_f| / batch)`` steps) is forget-only, as in E2URec;
    every later step adds a D_r batch of the same size with its remembering-teacher KL and
    task cross-entropy. Teachers are ``[N, 2]`` answer logits aligned with the examples.
    """
    yes, no = answer_ids(tokenizer)
    forget_batches = epoch_batches(len(forget), spec.batch_size, spec.seed)
    retain_batches = epoch_batches(len(retain), spec.batch_size, spec.seed + 2)
    forget_only = min(spec.steps, steps_per_epoch(len(forget), spec.batch_size))

    def logits(examples: Sequence[Example], idx: list[int]) -> torch.Tensor:
        return last_token_logits(engine, tokenizer, [examples[i].prompt for i in idx])[:, [yes, no]]

    def step_loss(step: int) -> torch.Tensor:
        f = next(forget_batches)
        f_student = logits(forget, f)
        f_teacher = forget_teacher[f].to(f_student.device)
        if step < forget_only:
            return student_loss(spec.beta, f_teacher, f_student)
        r = next(retain_batches)
        r_student = logits(retain, r)
        labels = torch.tensor([retain[i].label for i in r])
        return student_loss(spec.beta, f_teacher, f_student, retain_teacher[r].to(r_student.device), r_student, labels)

    return train_steps(engine, spec.steps, step_loss), forget_only
