"""Forward passes every rank of a silo runs together (ZeRO-3 evaluation), and the loop exits they must agree on.

Under ZeRO-3 each forward pass gathers the layers' parameter partitions from every rank, so all ranks must run the same
number of passes. A loop that stops early on what the model produced (greedy decoding at its stop tokens) decides on
each rank's own logits; two ranks whose kernels break an argmax tie differently would stop at different steps and the
longer one would wait forever in its next gather. Inside ``lockstep()`` such a decision is taken by all ranks at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_TOGETHER: ContextVar[bool] = ContextVar("fedshield_lockstep", default=False)


@contextmanager
def lockstep(together: bool = True) -> Iterator[None]:
    """Within this block every rank runs the same forward passes (``together``; a no-op block when False)."""
    token = _TOGETHER.set(together)
    try:
        yield
    finally:
        _TOGETHER.reset(token)


def all_ranks(flag: bool) -> bool:
    """``flag`` on this rank outside ``lockstep()`` (or in a one-process world); inside it, True only if it is True on
    every rank (an all-reduce of the minimum, so every rank returns the same answer)."""
    import torch.distributed as dist

    if not _TOGETHER.get() or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        value = value.cuda()
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())
