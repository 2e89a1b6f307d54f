"""Retrain baseline: a whole local federation run (``fedshield.local.demo.run_local``) on files without D_f's users."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from ..config import DataSpec, FederationConfig
from ..learning.model import load_base
from ..updates import lora_parameters
from ..workloads.recommendation import Interaction, write_movielens

DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def without_distributed_env() -> Iterator[None]:
    """Hide this process's torch.distributed rendezvous from child processes (each silo sets up its own)."""
    saved = {k: os.environ.pop(k) for k in DISTRIBUTED_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@dataclass(frozen=True)
class FederationRun:
    adapters: dict[str, dict[str, torch.Tensor]]  # silo -> every LoRA tensor after the last round
    seconds: float  # wall time of the whole run (processes, training, crypto)
    cpu_seconds: float  # CPU time of the aggregator and silo processes (user + system)
    report: dict  # fedshield.local.demo's report.json
    config: FederationConfig  # the config the silos ran (data from the written files)


def run_federation(config: FederationConfig, data: Mapping[str, Sequence[Interaction]], out: str | Path,
                   exclude_users: Collection[str] = ()) -> FederationRun:
    """Write each silo's interactions (minus ``exclude_users``) as files, run the federation on them, collect adapters.

    ``config.model.path`` must name a fixed base model, so that runs with and without some
    users start from the same network.
    """
    from .demo import run_local

    base_path = config.model.path
    if not base_path:
        raise ValueError("set config.model.path: runs to be compared must share one base model")
    out = Path(out)
    excluded = set(exclude_users)
    for silo in config.silo_names:
        write_movielens([it for it in data[silo] if it.user not in excluded], out / "data" / silo)
    data_spec = DataSpec(**(config.data.model_dump() | {"path": str(out / "data")}))
    config = config.model_copy(update={"data": data_spec})
    start, cpu = time.perf_counter(), children_cpu_seconds()
    with without_distributed_env():
        report = run_local(config, out / "run", console=Console(quiet=True))
    seconds, cpu = time.perf_counter() - start, children_cpu_seconds() - cpu
    adapters = {silo: read_adapter(base_path, out / "run" / "silos" / silo / "adapter") for silo in config.silo_names}
    return FederationRun(adapters, seconds, cpu, report, config)


def read_adapter(base_path: str | Path, adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    """Every LoRA tensor, by its full PEFT parameter name, of an adapter a silo saved in PEFT format."""
    from peft import PeftModel

    base, _ = load_base(base_path)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    return {name: p.detach().clone() for name, p in lora_parameters(model).items()}


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # child processes already waited for
    return usage.ru_utime + usage.ru_stime
