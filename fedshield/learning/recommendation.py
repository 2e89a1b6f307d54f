"""The model side of the recommendation workload: TALLRec yes/no prompts scored by P(yes) (AUC, LogLoss, NDCG@5).

The same loss and scores the silo agent uses today (``learning.training.train_local_stats``,
``learning.model.yes_probabilities``), behind the ``Workload`` interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..workloads.base import Column, Evaluation, Split, Workload
from ..workloads.recommendation import Example, build_examples, load_movielens, split_examples, temporal_examples
from ..workloads.scoring import auc, grouped_ndcg_at_k, log_loss
from .model import answer_ids, answer_losses, check_context, last_token_logits, yes_probabilities

NDCG_K = 5


@dataclass
class RecommendationWorkload(Workload[Example]):
    """Will the user like the target item, given the items they liked and disliked before?

    ``holdout`` set: each user's last ``holdout`` interactions are the validation targets (a
    temporal split); unset: a seeded random ``val_fraction`` of the examples.
    """

    name: ClassVar[str] = "recommendation"
    columns: ClassVar[tuple[Column, ...]] = (Column("auc", "AUC", ".3f"), Column("log_loss", "LogLoss", ".3f"),
                                             Column("ndcg_5", "NDCG@5", ".3f"))
    loss_metric: ClassVar[str] = "log_loss"
    history: int = 5
    like_threshold: float = 4.0
    val_fraction: float = 0.2
    seed: int = 0
    holdout: int | None = None

    def examples(self, path) -> Split[Example]:
        return self.split(load_movielens(path))

    def split(self, interactions) -> Split[Example]:
        """Train and validation examples from a silo's interactions (read from files, or synthetic)."""
        if self.holdout:
            train, val = temporal_examples(interactions, self.holdout, self.history, self.like_threshold)
        else:
            train, val = split_examples(build_examples(interactions, self.history, self.like_threshold), self.val_fraction, self.seed)
        return Split(train, val)

    def check(self, model, tokenizer, examples) -> None:
        check_context(model, tokenizer, [e.prompt for e in examples])

    def loss(self, model, tokenizer, batch) -> torch.Tensor:
        return self.record_losses(model, tokenizer, batch).mean()  # = answer_loss: the mean of the per-record losses

    def record_losses(self, model, tokenizer, batch) -> torch.Tensor:
        yes, no = answer_ids(tokenizer, batch[0].prompt)
        logits = last_token_logits(model, tokenizer, [e.prompt for e in batch])
        return answer_losses(logits.float(), torch.tensor([e.label for e in batch]), yes, no)

    def tokens(self, tokenizer, batch) -> int:
        return sum(len(ids) for ids in tokenizer([e.prompt for e in batch])["input_ids"]) if batch else 0

    def evaluate(self, model, tokenizer, examples) -> Evaluation:
        probs = yes_probabilities(model, tokenizer, [e.prompt for e in examples])
        labels = np.array([e.label for e in examples])
        metrics = {"auc": auc(labels, probs), "log_loss": log_loss(labels, probs)}
        known = np.array([bool(e.user) for e in examples], dtype=bool)  # examples without a user rank nothing
        ndcg = grouped_ndcg_at_k([e.user for e in examples if e.user], labels[known], probs[known], NDCG_K)
        if ndcg is not None:  # each user's validation items ranked by P(yes); absent when no user has two with a like
            metrics["ndcg_5"] = ndcg
        return Evaluation(metrics, "auc")
