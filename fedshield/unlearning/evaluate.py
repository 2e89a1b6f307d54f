"""Scoring an adapter the way E2URec's paper does, and a membership-inference check.

- task metrics on a set: AUC, accuracy (P(yes) > 0.5) and LogLoss;
- distance to Retrain: the symmetric KL of the two models' full next-token distributions at
  the answer position (the authors' "JSD"-named measure), the L2 distance of those
  distributions, the L2 distance of the adapters' weight changes, and our Bernoulli JSD on
  the Yes/No answer;
- membership inference by a loss threshold: the best TPR - FPR over thresholds for telling
  a set's records from never-seen records by their loss (forgotten users should look unseen),
  the same attack's AUC, and its user-level form (each user's mean record loss).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import LoraSpec
from ..learning.model import last_token_logits, yes_probabilities
from ..workloads.recommendation import Example
from ..workloads.scoring import auc, log_loss
from .current import current_model
from .fold import lora_pairs


def yes_distribution(model: torch.nn.Module, tokenizer, examples: Sequence[Example]) -> np.ndarray:
    """P(yes) per example, normalised over the two answers (P(no) = 1 - P(yes))."""
    return yes_probabilities(model, tokenizer, [e.prompt for e in examples])


def jensen_shannon(p: np.ndarray, q: np.ndarray, eps: float = 1e-12) -> float:
    """Mean over examples of JSD(Bernoulli(p_i), Bernoulli(q_i)), in nats (0 ... ln 2)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {q.shape}")
    P = np.stack([p, 1 - p], axis=-1)
    Q = np.stack([q, 1 - q], axis=-1)
    M = (P + Q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sum(np.where(a > 0, a * (np.log(np.maximum(a, eps)) - np.log(np.maximum(b, eps))), 0.0), axis=-1)

    return float(np.mean(0.5 * kl(P, M) + 0.5 * kl(Q, M)))


def labels_of(examples: Sequence[Example]) -> np.ndarray:
    return np.array([e.label for e in examples])


def score_adapter(base_path: str | Path, lora: LoraSpec, adapter: Mapping[str, torch.Tensor],
                  test: Sequence[Example], forget: Sequence[Example]) -> dict:
    """AUC on held-out ``test`` and on D_f, and the Yes/No distribution on D_f (key ``forget_yes``)."""
    model, tokenizer = current_model(base_path, lora, adapter)
    test_yes = yes_distribution(model, tokenizer, test)
    forget_yes = yes_distribution(model, tokenizer, forget)
    return {"test_auc": auc(labels_of(test), test_yes), "forget_auc": auc(labels_of(forget), forget_yes), "forget_yes": forget_yes}


def task_metrics(labels: np.ndarray, yes: np.ndarray) -> dict[str, float]:
    """AUC, accuracy at P(yes) > 0.5, and LogLoss of the Yes/No answers."""
    labels, yes = np.asarray(labels), np.asarray(yes, dtype=np.float64)
    return {"auc": auc(labels, yes), "acc": float(np.mean((yes > 0.5) == (labels == 1))), "logloss": log_loss(labels, yes)}


@torch.no_grad()
def next_token_distributions(model: torch.nn.Module, tokenizer, examples: Sequence[Example], batch_size: int = 32) -> torch.Tensor:
    """``[N, vocab]`` float64 next-token probabilities after each prompt (the whole vocabulary)."""
    was_training = model.training
    model.eval()
    out = [torch.softmax(last_token_logits(model, tokenizer, [e.prompt for e in examples[i : i + batch_size]]).double(), -1).cpu()
           for i in range(0, len(examples), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0, dtype=torch.float64)


def symmetric_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-12) -> float:
    """Mean over rows of KL(p || q) + KL(q || p), in nats."""
    if p.shape != q.shape:
        raise ValueError(f"shapes differ: {tuple(p.shape)} vs {tuple(q.shape)}")
    lp, lq = torch.log(p.clamp_min(eps)), torch.log(q.clamp_min(eps))
    return float(((p - q) * (lp - lq)).sum(dim=-1).mean())


def output_l2(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean over rows of the L2 distance between two distributions."""
    return float(torch.linalg.vector_norm(p - q, dim=-1).mean())


def delta_weight_l2(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], scale: float) -> float:
    """L2 (Frobenius) distance between the weight changes ``scale * B @ A`` two adapters make, over all modules."""
    total = 0.0
    for name_a, name_b in lora_pairs(a).values():
        da = scale * a[name_b].double() @ a[name_a].double()
        db = scale * b[name_b].double() @ b[name_a].double()
        total += float(((da - db) ** 2).sum())
    return float(np.sqrt(total))


def membership_advantage(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """Loss-threshold attack (Yeom et al.): max over thresholds of TPR - FPR for "loss <= t means member".

    0 when the two sets' losses cannot be told apart; 1 when every member has a lower loss than
    every non-member.
    """
    members, others = np.sort(np.asarray(member_losses, dtype=np.float64)), np.sort(np.asarray(nonmember_losses, dtype=np.float64))
    if not len(members) or not len(others):
        raise ValueError("both sets need records")
    thresholds = np.concatenate([members, others])
    tpr = np.searchsorted(members, thresholds, side="right") / len(members)
    fpr = np.searchsorted(others, thresholds, side="right") / len(others)
    return float(max(0.0, np.max(tpr - fpr)))


def membership_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """The loss attack's AUC: the probability that a member's loss is below a non-member's (ties count half).

    0.5 when the two sets cannot be told apart; uses every threshold, so it is less noisy than the best one's advantage.
    """
    members, others = np.asarray(member_losses, dtype=np.float64), np.asarray(nonmember_losses, dtype=np.float64)
    if not len(members) or not len(others):
        raise ValueError("both sets need records")
    return auc(np.r_[np.ones(len(members)), np.zeros(len(others))], -np.r_[members, others])


def user_mean_losses(losses: np.ndarray, users: Sequence[str]) -> np.ndarray:
    """Each user's mean record loss, users in sorted order: the unit a user-level attack (and a forget request) is about.

    Averaging a user's records before thresholding makes the attack far less noisy than per record when a model
    memorises users a little on each of their records.
    """
    losses = np.asarray(losses, dtype=np.float64)
    if len(losses) != len(users):
        raise ValueError(f"one user per loss: {len(losses)} losses, {len(users)} users")
    names = sorted(set(users))
    index = {u: i for i, u in enumerate(names)}
    codes = np.array([index[u] for u in users], dtype=np.int64)
    return np.bincount(codes, weights=losses, minlength=len(names)) / np.bincount(codes, minlength=len(names))


def record_losses(labels: np.ndarray, yes: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Per-record cross-entropy of the right answer."""
    yes = np.clip(np.asarray(yes, dtype=np.float64), eps, 1 - eps)
    return np.where(np.asarray(labels) == 1, -np.log(yes), -np.log(1 - yes))
