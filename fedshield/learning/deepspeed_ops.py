"""DeepSpeed's CPU collectives op, loaded so that a process killed while loading it cannot block the next one.

On a CPU accelerator DeepSpeed builds a small C++ op (``deepspeed_shm_comm``) just in time and loads it from the
extensions cache (``$TORCH_EXTENSIONS_DIR``) at every start. torch guards each build or load with a ``lock`` file in the
op's build directory that only a process that finishes removes: a silo killed in that window (SIGKILL, OOM, a node
lost) leaves it behind, and every later start waits on it forever. Here each load holds an OS file lock instead
(``flock``: the kernel releases it when its holder dies, so it is never stale); a torch ``lock`` found while holding it
was left by a dead process and is removed. Every FedShield process loads the op this way before DeepSpeed asks for it
(DeepSpeed then reuses the loaded module); another program building the same op in the same cache at the same moment
is not covered.
"""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path

log = logging.getLogger(__name__)

OP = "ShareMemCommBuilder"


def build_directory(name: str) -> Path:
    """Where torch builds (and caches) the extension ``name``; torch names the directory, its rules are private."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


def load_shm_op() -> None:
    """Load the op once per process (built if the cache lacks it) under a lock a dead process cannot leave held; nothing
    where the accelerator has no such op (CUDA)."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder(OP)
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return
    directory = build_directory(builder.NAME)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f"{builder.NAME}.load-lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        stale = directory / "lock"
        if stale.exists():
            log.warning("removing %s, left by a process that died while building or loading %s", stale, builder.NAME)
            stale.unlink()
        builder.load(verbose=False)
