"""The student's loss (E2URec), on answer-position logits.

Position choice: the Yes/No task has one answer token, predicted right after the prompt,
so every KL here is over that one position and over the two answer tokens only: logits
arrive as ``[N, 2]`` (columns yes, no) and are turned into a two-way softmax. This is the
distribution the project scores, trains (``answer_loss``) and compares (JSD); the rest of
the vocabulary carries no answer and would dilute the distillation signal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def answer_kl(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(softmax(teacher) || softmax(student)); both ``[N, 2]`` (yes, no) logits."""
    t = F.log_softmax(teacher.float(), dim=-1)
    s = F.log_softmax(student.float(), dim=-1)
    return (t.exp() * (t - s)).sum(dim=-1).mean()


def answer_cross_entropy(student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Task loss: cross-entropy of the true answer (label 1 = yes = column 0)."""
    return F.cross_entropy(student.float(), (1 - labels.long()).to(student.device))


def student_loss(
    beta: float,
    forget_teacher: torch.Tensor,
    forget_student: torch.Tensor,
    retain_teacher: torch.Tensor | None = None,
    retain_student: torch.Tensor | None = None,
    retain_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """``beta * KL(f-teacher || student)`` on D_f ``+ (1 - beta) * (KL(r-teacher || student) + CE)`` on D_r.

    Without retained-set tensors (E2URec's first, forget-only epoch) only the first term is returned.
    """
    loss = beta * answer_kl(forget_teacher, forget_student)
    if retain_student is None:
        return loss
    if retain_teacher is None or retain_labels is None:
        raise ValueError("the retained-set term needs the teacher's logits and the labels")
    return loss + (1 - beta) * (answer_kl(retain_teacher, retain_student) + answer_cross_entropy(retain_student, retain_labels))
