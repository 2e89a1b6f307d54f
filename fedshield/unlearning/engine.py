"""The silo's DeepSpeed engine path, with the unlearning run's learning rate and batch size."""

from __future__ import annotations

import torch

from ..config import TrainingSpec
from ..learning.training import create_engine


def unlearning_engine(model: torch.nn.Module, training: TrainingSpec, learning_rate: float, batch_size: int):
    """``create_engine`` as federated training uses it (same ZeRO stage and precision), other lr and batch."""
    return create_engine(model, training.model_copy(update={"learning_rate": learning_rate, "batch_size": batch_size}))
