"""DeepSpeed's just-in-time CPU op: a lock left by a killed process does not block the next start (issue #20)."""

import os
import shutil
import subprocess
import sys

from fedshield.learning.deepspeed_ops import build_directory

NAME = "deepspeed_shm_comm"
START = "from fedshield.learning.training import init_distributed; init_distributed(); print('started')"


def test_a_start_after_a_process_killed_mid_build_does_not_wait_on_its_lock(tmp_path, monkeypatch):
    """torch's own ``lock`` file stays behind when its holder is killed (kill -9 while building or loading the op);
    torch's next load waits for it to disappear, forever. The silo's start removes it under a lock the kernel frees."""
    cached = build_directory(NAME)  # this machine's cache: copied, so the op need not be compiled again
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    directory = build_directory(NAME)
    if (cached / f"{NAME}.so").exists():
        shutil.copytree(cached, directory, dirs_exist_ok=True, ignore=shutil.ignore_patterns("lock"))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "lock").write_text("")  # what a builder killed with SIGKILL leaves
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    run = subprocess.run([sys.executable, "-c", START], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "started" in run.stdout, run.stderr[-3000:]
    assert "left by a process that died" in run.stderr
    assert (directory / f"{NAME}.so").exists() and not (directory / "lock").exists()
