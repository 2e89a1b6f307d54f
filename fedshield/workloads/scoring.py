"""AUC and log-loss of binary predictions, NDCG@k of rankings and its mean over users (pure numpy; tests check
them against scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); 0.5 if one class is absent."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return 0.5
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(labels * np.log(probs) + (1 - labels) * np.log(1 - probs)))


def ndcg_at_k(relevance: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Mean NDCG@k over users: ``relevance`` and ``scores`` are (users, items); gain = relevance, discount log2(rank + 1).

    Items are ranked by score; tied scores share the average gain of their tie group
    (as scikit-learn's ``ndcg_score`` does). A user with no relevant item scores 0.
    """
    relevance = np.atleast_2d(np.asarray(relevance, dtype=np.float64))
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if relevance.shape != scores.shape:
        raise ValueError(f"relevance {relevance.shape} and scores {scores.shape} differ in shape")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    discount = 1.0 / np.log2(np.arange(relevance.shape[1]) + 2.0)
    discount[k:] = 0.0
    out = []
    for rel, score in zip(relevance, scores, strict=True):
        ideal = float(np.sort(rel)[::-1] @ discount)
        if ideal == 0.0:
            out.append(0.0)
            continue
        order = np.argsort(-score, kind="mergesort")
        ranked_scores, gains = score[order], rel[order]
        # tie groups: average the gain over each group, so the order within a tie does not matter
        starts = np.concatenate([[0], np.flatnonzero(np.diff(ranked_scores)) + 1])
        ends = np.concatenate([starts[1:], [len(score)]])
        averaged = np.empty_like(gains)
        for a, b in zip(starts, ends, strict=True):
            averaged[a:b] = gains[a:b].mean()
        out.append(float(averaged @ discount) / ideal)
    return float(np.mean(out))


def grouped_ndcg_at_k(groups: Sequence[str], relevance: np.ndarray, scores: np.ndarray, k: int) -> float | None:
    """Mean NDCG@k over groups (a recommendation's users: each ranks its own items by score).

    Only groups with at least two items and one relevant item count (one item, or none relevant, ranks
    nothing); None when no group qualifies.
    """
    relevance, scores = np.asarray(relevance, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if not len(groups) == len(relevance) == len(scores):
        raise ValueError(f"{len(groups)} groups, {len(relevance)} relevances and {len(scores)} scores differ in length")
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    values = [ndcg_at_k(relevance[idx], scores[idx], k) for idx in members.values()
              if len(idx) >= 2 and relevance[idx].max() > 0]
    return float(np.mean(values)) if values else None
