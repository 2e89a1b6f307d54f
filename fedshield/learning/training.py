"""Local training with a DeepSpeed engine around the PEFT model (CPU accelerator without a GPU)."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import NamedTuple

import numpy as np
import torch

from ..config import TrainingSpec, uneven_batch_message
from ..updates import VectorLayout
from ..workloads.base import Workload
from .deepspeed_ops import load_shm_op
from .dp_sgd import DpSgd, dp_sgd_step, sample_records, secure_generator, unit_ids
from .recommendation import RecommendationWorkload


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def world() -> tuple[int, int]:
    """This process's (rank, world size): torchrun's RANK and WORLD_SIZE, (0, 1) for a process started alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> None:
    """The torch.distributed world DeepSpeed requires: join torchrun's (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the
    environment) when WORLD_SIZE > 1, else a one-process world of its own (a silo trains alone)."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    rank, ranks = world()
    if ranks == 1:
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # this rank's GPU, before NCCL starts
    timeout = timedelta(days=8)  # ranks > 0 wait in a broadcast while rank 0 waits for a round to close (deadline <= 7 days)
    if ranks > 1 and (attempt := os.environ.get("TORCHELASTIC_RESTART_COUNT")) is not None:
        # torchrun keeps one store across restarts: a restarted rank could read the address a dead one left there and
        # fail to connect. Each attempt's group meets under its own prefix instead.
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), ranks,
                              is_master=rank == 0 and not agent_store, timeout=timeout)
        dist.init_process_group(backend, store=dist.PrefixStore(f"fedshield/attempt-{attempt}", store), rank=rank,
                                world_size=ranks, timeout=timeout)
    load_shm_op()  # before DeepSpeed loads it without a guard against a lock a killed process left
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, timeout=timeout)


def broadcast(obj=None):
    """Rank 0's ``obj`` on every rank (any picklable object); the object itself in a one-process world."""
    import torch.distributed as dist

    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here (nothing in a one-process world)."""
    import torch.distributed as dist

    if world()[1] > 1:
        dist.barrier()


def leave_distributed() -> None:
    """Every rank done: meet once more, then tear the process group down before the interpreter exits (a gloo group
    left to the interpreter's exit can abort a rank with "terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def _all_sum(values: Sequence[float]) -> list[float]:
    import torch.distributed as dist

    if world()[1] == 1:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def check_batch_split(batch_size: int, ranks: int, silo: str = "this silo") -> int:
    """Each rank's share of a batch (its micro-batch); ValueError (the spec's wording) unless ``batch_size`` divides evenly
    over the ranks."""
    if batch_size % ranks:
        raise ValueError(uneven_batch_message(batch_size, [f"{silo} ({ranks} ranks)"]))
    return batch_size // ranks


def deepspeed_config(spec: TrainingSpec, dp: bool = False) -> dict:
    """The engine's config; under DP-SGD the engine clips nothing itself (per-unit clipping is the DP step's).

    With W ranks each takes ``batch_size / W`` of every batch and the engine averages their gradients
    (train_batch_size = micro-batch * W)."""
    ranks = world()[1]
    return {
        "train_batch_size": spec.batch_size,
        "train_micro_batch_size_per_gpu": check_batch_split(spec.batch_size, ranks),
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
    init_distributed()
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
    returns the mean loss and the tokens processed.

    In a world of W ranks every rank draws the same seeded batch and trains its slice ``r::W`` (the engine
    averages the gradients); the loss and tokens returned are the whole batch's, on every rank."""
    task = workload or RecommendationWorkload()
    rng = random.Random(seed)
    pool = list(examples)
    rank, ranks = world()
    if ranks > 1:
        check_batch_split(min(batch_size, len(pool)), ranks)
    tokens = 0

    def step_loss(_: int) -> torch.Tensor:
        nonlocal tokens
        batch = rng.sample(pool, min(batch_size, len(pool)))[rank::ranks]
        tokens += task.tokens(tokenizer, batch)
        return task.loss(engine, tokenizer, batch)

    loss_sum, token_sum = _all_sum([float(np.sum(train_steps(engine, steps, step_loss))), float(tokens)])
    return LocalTraining(loss_sum / (steps * ranks), int(token_sum))


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


def whole_parameters(engine, params: Iterable[torch.Tensor], modify: bool = False) -> AbstractContextManager:
    """Inside the block, ``params`` whole on this rank. Under ZeRO-3 (which partitions parameters over the ranks) this is
    DeepSpeed's ``GatheredParameters``, a collective every rank enters; with ``modify`` what rank 0 writes into them in
    the block is what every rank keeps. Under the other stages it does nothing."""
    if engine.zero_optimization_stage() != 3:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=0 if modify else None)


def load_weights(engine, layout: VectorLayout, params: Mapping[str, torch.Tensor], values: np.ndarray) -> None:
    """Write ``values`` (a shared vector, e.g. the decrypted global adapter) into ``params``, the engine's model (under
    ZeRO-3 every rank calls it: ``whole_parameters``).

    DeepSpeed's ZeRO stages and its bf16/fp16 optimizers step a master fp32 copy of the parameters and write it back
    over them; the copy is refreshed from the parameters here, or the next step would undo the assignment.
    """
    with whole_parameters(engine, params.values(), modify=True):
        layout.assign(params, values)
    refresh_master_weights(engine)


def partitions_optimizer(engine) -> bool:
    """Whether the engine's optimiser holds only this rank's share of its state (ZeRO 1-3, DeepSpeed's BF16_Optimizer):
    its ``state_dict`` is this rank's partition and its ``load_state_dict`` takes every rank's, in rank order."""
    from deepspeed.runtime.base_optimizer import ZeROOptimizer

    return isinstance(getattr(engine, "optimizer", None), ZeROOptimizer)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def optimizer_state(engine) -> dict | list[dict] | None:
    """The optimiser's state for a checkpoint, on rank 0 (None on the others). Every rank calls it: it is also the
    barrier that every rank reaches before rank 0 writes the checkpoint.

    A partitioning optimiser (``partitions_optimizer``) gives the list of every rank's state dict, gathered on rank 0
    (copied to the CPU), which is what ``load_optimizer_state`` gives back to each rank; any other optimiser its state
    dict, the same on every rank (rank 0's is taken)."""
    import torch.distributed as dist

    rank, ranks = world()
    if not partitions_optimizer(engine):
        barrier()
        return engine.optimizer.state_dict() if rank == 0 else None
    own = _to_cpu(engine.optimizer.state_dict())
    if ranks == 1:
        return [own]
    parts: list | None = [None] * ranks if rank == 0 else None
    dist.gather_object(own, parts, dst=0)
    return parts


def load_optimizer_state(engine, saved: dict | list[dict]) -> None:
    """Give the optimiser back what ``optimizer_state`` returned (each rank of a partitioning optimiser takes its own
    partition). A one-process ZeRO checkpoint written before partitions were listed (a bare state dict) is accepted.

    ValueError when the checkpoint was written by a different number of ranks, or with a ZeRO stage / precision that
    partitions when this one does not (or the reverse): partitions do not move between world sizes or optimisers."""
    from deepspeed.checkpoint.constants import DS_VERSION

    partitioned = partitions_optimizer(engine)
    ranks = world()[1]
    if partitioned and isinstance(saved, dict) and DS_VERSION in saved:
        saved = [saved]
    if partitioned != isinstance(saved, list):
        raise ValueError("the checkpoint's optimiser state was written with a training.zeroStage / training.precision that "
                         f"{'does not partition' if partitioned else 'partitions'} it, unlike this silo's "
                         f"({type(engine.optimizer).__name__}): restart with the checkpoint's settings")
    if partitioned and len(saved) != ranks:
        raise ValueError(f"the checkpoint's optimiser state is partitioned over {len(saved)} ranks and this silo runs {ranks}: "
                         "restart it with the number of ranks that wrote it")
    engine.optimizer.load_state_dict(saved)


def refresh_master_weights(engine) -> None:
    """After writing into the engine's parameters: copy them into the optimizer's fp32 master weights, if it keeps any."""
    refresh = getattr(getattr(engine, "optimizer", None), "refresh_fp32_params", None)
    if callable(refresh):
        refresh()
