"""A silo's durable state, written atomically after every round (and before every upload)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "state.pt"
FORGOTTEN_FILE = "forgotten-users.json"


@dataclass
class PendingUpload:
    """An upload built (and maybe sent) but whose round has not been applied yet."""

    round: int
    data: bytes
    mask: np.ndarray
    residual: np.ndarray  # the error-feedback residual once this upload counts
    train_loss: float | None  # None when DP-SGD sampled no record in any step
    mix_weight: float | None = None  # personalise: this silo's warm-up weight in the round's plan


@dataclass
class SiloState:
    round_done: int  # last round whose aggregate was applied; -1 before the first
    global_shared: np.ndarray  # the shared vector as of the last applied aggregate
    lora: dict[str, torch.Tensor]  # every LoRA tensor (shared and private)
    residual: np.ndarray | None = None
    score: np.ndarray | None = None  # decayed sum of |aggregate| (updates.next_score): the next mask's exploit signal
    pending: PendingUpload | None = None
    history: list[dict] = field(default_factory=list)
    # the optimiser's state_dict (AdamW moments): a restarted silo trains on identically; a list of every rank's state dict
    # when the optimiser partitions it (ZeRO 1-2, learning.training.optimizer_state)
    optimizer: dict | list[dict] | None = None
    unlearnings_applied: int = 0  # published unlearnings this silo has applied
    personal_shared: np.ndarray | None = None  # personalise: the shared vector of adapter-personal, as of round_done


def save_state(directory: str | Path, state: SiloState) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (STATE_FILE + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state.__dict__ | {"pending": state.pending.__dict__ if state.pending else None}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / STATE_FILE)


def load_state(directory: str | Path) -> SiloState | None:
    path = Path(directory) / STATE_FILE
    if not path.exists():
        return None
    raw = torch.load(path, weights_only=False)
    pending = raw.pop("pending", None)
    return SiloState(**raw, pending=PendingUpload(**pending) if pending else None)


def clear_state(directory: str | Path) -> None:
    (Path(directory) / STATE_FILE).unlink(missing_ok=True)


def forgotten_users(directory: str | Path) -> set[str]:
    """Users this silo has forgotten: their records are dropped whenever its data is loaded."""
    path = Path(directory) / FORGOTTEN_FILE
    return set(json.loads(path.read_text())) if path.exists() else set()


def remember_forgotten(directory: str | Path, users: set[str]) -> None:
    """Add ``users`` to the forgotten list (atomically)."""
    path = Path(directory) / FORGOTTEN_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(sorted(forgotten_users(directory) | set(users))))
    os.replace(tmp, path)
