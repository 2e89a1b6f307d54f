"""PPLR's personal adapter at a silo (``aggregation.personalise``): its own trained shared parameters mixed with the new
global ones by its warm-up weight. The global adapter stays the federation's state; this one is the silo's own."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel

from ..fairness import personalised_mix
from ..updates import VectorLayout

PERSONAL_ADAPTER = "adapter-personal"  # next to the global ``adapter`` in the silo's work directory


def personal_vector(own: np.ndarray, global_shared: np.ndarray, weight: float, contributors: int) -> np.ndarray:
    """The personal shared vector: PPLR's personalised aggregate with every similarity 1 (``fairness.personalised_mix``)."""
    if own.shape != global_shared.shape:
        raise ValueError(f"own and global shared vectors differ in shape: {own.shape} vs {global_shared.shape}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"a warm-up weight is in [0, 1], not {weight}")
    return personalised_mix(own, global_shared, weight, contributors)


@contextmanager
def shared_values(layout: VectorLayout, params: Mapping[str, torch.Tensor], values: np.ndarray,
                  restore: np.ndarray) -> Iterator[None]:
    """The model's shared LoRA tensors set to ``values`` inside the block, to ``restore`` after it (private ones untouched)."""
    layout.assign(params, values)
    try:
        yield
    finally:
        layout.assign(params, restore)


def save_peft(model: PeftModel, out: Path) -> Path:
    """``model.save_pretrained`` into ``out``, written beside it first and swapped in (a crash leaves the old or the new)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))  # peft types the directory as str
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def drop_personal(workdir: Path) -> None:
    """Remove the personal adapter (stale once the global one is replaced by an unlearning)."""
    shutil.rmtree(Path(workdir) / PERSONAL_ADAPTER, ignore_errors=True)
