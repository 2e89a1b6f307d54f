"""Scoring an adapter: Yes/No distributions, AUC, and the Jensen–Shannon divergence between two models."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..config import LoraSpec
from ..learning.model import yes_probabilities
from ..workloads.recommendation import Example
from ..workloads.scoring import auc
from .current import current_model


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
