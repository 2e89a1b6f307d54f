"""The update vector: shared LoRA tensors flattened in a stable, documented order.

Order: parameters sorted by name (plain string order), each flattened row-major
(``torch.Tensor.reshape(-1)``). Parameters whose names match a private pattern
(``fnmatch`` globs, e.g. ``*.layers.0.*``) are not part of the vector: they are
trained locally and never leave the silo (PPLR flexible storage).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import numpy as np
import torch

LORA_MARKER = "lora_"


def is_private(name: str, private_patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in private_patterns)


def lora_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Every LoRA parameter of a PEFT model, by its full name."""
    return {name: p for name, p in model.named_parameters() if LORA_MARKER in name}


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class VectorLayout:
    """Where each shared tensor lives in the flat update vector."""

    entries: tuple[Entry, ...]

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], private_patterns: Sequence[str] = ()) -> VectorLayout:
        entries, offset = [], 0
        for name in sorted(tensors):
            if is_private(name, private_patterns):
                continue
            shape = tuple(int(d) for d in tensors[name].shape)
            entries.append(Entry(name, shape, offset))
            offset += entries[-1].size
        if not entries:
            raise ValueError("no shared tensor left: every LoRA tensor matches a private pattern")
        return cls(tuple(entries))

    @property
    def size(self) -> int:
        last = self.entries[-1]
        return last.offset + last.size

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    @property
    def digest(self) -> str:
        """Identifies the layout (names and shapes); travels in every envelope."""
        text = ";".join(f"{e.name}:{'x'.join(map(str, e.shape))}" for e in self.entries)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
        """The shared tensors as one float64 vector (private ones are never read)."""
        out = np.empty(self.size, dtype=np.float64)
        for e in self.entries:
            t = tensors[e.name]
            if tuple(t.shape) != e.shape:
                raise ValueError(f"{e.name} has shape {tuple(t.shape)}, layout expects {e.shape}")
            out[e.offset : e.offset + e.size] = t.detach().reshape(-1).to(torch.float64).cpu().numpy()
        return out

    def unflatten(self, vector: np.ndarray) -> dict[str, torch.Tensor]:
        """Tensors (float32) from a vector of this layout."""
        if vector.shape != (self.size,):
            raise ValueError(f"vector has shape {vector.shape}, layout needs ({self.size},)")
        return {
            e.name: torch.from_numpy(np.ascontiguousarray(vector[e.offset : e.offset + e.size], dtype=np.float32)).reshape(e.shape)
            for e in self.entries
        }

    def assign(self, tensors: Mapping[str, torch.Tensor], vector: np.ndarray) -> None:
        """Copy a vector into the matching (shared) tensors in place."""
        with torch.no_grad():
            for name, value in self.unflatten(vector).items():
                tensors[name].copy_(value.to(tensors[name].dtype))
