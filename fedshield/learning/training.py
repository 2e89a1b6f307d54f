"""Local training with a DeepSpeed engine around the PEFT model (CPU accelerator without a GPU)."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from ..config import TrainingSpec
from ..workloads.base import Workload
from .dp_sgd import DpSgd, dp_sgd_step, sample_records, secure_generator, unit_ids
from .recommendation import RecommendationWorkload


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_single_process() -> None:
    """A one-process torch.distributed world (each silo trains alone), as DeepSpeed requires."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


def deepspeed_config(spec: TrainingSpec, dp: bool = False) -> dict:
    """The engine's config; under DP-SGD the engine clips nothing itself (per-unit clipping is the DP step's)."""
    return {
        "train_micro_batch_size_per_gpu": spec.batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": spec.zero_stage},
        "bf16": {"enabled": spec.precision == "bf16"},
        "fp16": {"enabled": spec.precision == "fp16"},
        "gradient_clipping": 0.0 if dp else 1.0,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def create_engine(model: torch.nn.Module, spec: TrainingSpec, dp: bool = False):
    """``deepspeed.initialize`` with AdamW over the trainable (LoRA) parameters.

    With ``dp`` the model is wrapped in Opacus' ``GradSampleModule`` first (per-record gradients
    for DP-SGD); that needs ZeRO stage 0, where each parameter's gradient stays whole.
    """
    import deepspeed

    if dp:
        from opacus import GradSampleModule

        if spec.zero_stage != 0:
            raise ValueError(f"DP-SGD needs ZeRO stage 0 (per-record gradients of whole parameters), got stage {spec.zero_stage}")
        model = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    init_single_process()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=spec.learning_rate, weight_decay=0.0)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(spec, dp))
    return engine


def set_learning_rate(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


class LocalTraining(NamedTuple):
    loss: float  # mean training loss over the steps
    tokens: int  # prompt tokens processed (padding excluded)


def train_local_stats(engine, tokenizer, examples: Sequence, steps: int, batch_size: int, seed: int,
                      workload: Workload | None = None) -> LocalTraining:
    """``steps`` optimiser steps on seeded random batches of ``workload``'s loss (default: recommendation);
    returns the mean loss and the tokens processed."""
    task = workload or RecommendationWorkload()
    rng = random.Random(seed)
    pool = list(examples)
    tokens = 0

    def step_loss(_: int) -> torch.Tensor:
        nonlocal tokens
        batch = rng.sample(pool, min(batch_size, len(pool)))
        tokens += task.tokens(tokenizer, batch)
        return task.loss(engine, tokenizer, batch)

    return LocalTraining(float(np.mean(train_steps(engine, steps, step_loss))), tokens)


def train_local_dp(engine, tokenizer, examples: Sequence, steps: int, dp: DpSgd, seed: int,
                   generator: torch.Generator | None = None, micro_batch: int = 16,
                   workload: Workload | None = None) -> LocalTraining:
    """``steps`` DP-SGD steps (``fedshield.learning.dp_sgd``) on Poisson batches of records or users, on
    ``workload``'s per-example losses (default: recommendation).

    ``engine`` comes from ``create_engine(..., dp=True)``. The batch sampling is seeded (it is
    not secret: what protects a record is the noise); the noise comes from ``generator``, OS
    entropy unless a test passes one.
    """
    workload = workload or RecommendationWorkload()
    units = unit_ids([e.user for e in examples], dp.unit)
    n_units = max(units, default=-1) + 1
    trainable = [p for p in engine.module.parameters() if p.requires_grad]
    rng, generator = random.Random(seed), generator or secure_generator()
    engine.train()

    def per_record_loss(idx: Sequence[int]) -> torch.Tensor:
        return workload.record_losses(engine, tokenizer, [examples[i] for i in idx])

    losses, tokens = [], 0
    for _ in range(steps):
        records = sample_records(units, n_units, dp.sampling_rate, rng)
        tokens += workload.tokens(tokenizer, [examples[r] for r in records])
        step = dp_sgd_step(engine, trainable, per_record_loss, records, units, n_units, dp, generator, micro_batch)
        if step.records:
            losses.append(step.loss)
    return LocalTraining(float(np.mean(losses)) if losses else float("nan"), tokens)


def train_local(engine, tokenizer, examples: Sequence, steps: int, batch_size: int, seed: int) -> float:
    """``steps`` optimiser steps on seeded random batches; returns the mean loss."""
    return train_local_stats(engine, tokenizer, examples, steps, batch_size, seed).loss


def train_steps(engine, steps: int, step_loss: Callable[[int], torch.Tensor]) -> list[float]:
    """``steps`` optimiser steps of ``engine`` on any loss (``step_loss(step)`` runs the forward pass); returns the losses."""
    engine.train()
    losses = []
    for step in range(steps):
        loss = step_loss(step)
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))
    return losses
