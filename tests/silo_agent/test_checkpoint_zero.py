"""A silo restarted from its checkpoint under ZeRO 1-2 resumes with the optimiser moments it had (issue #20).

ZeRO 1 and 2 partition the AdamW moments over the ranks: the checkpoint holds every rank's partition (gathered on rank 0,
one state file), and each restarted rank takes its own back."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedshield.config import FederationConfig
from fedshield.learning.data import base_model_path
from fedshield.local.demo import free_port
from fedshield.silo_agent.checkpoint import load_state

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "rank_checkpoint.py"


def _run(model_dir: Path, workdir: Path, out: Path, ranks: int, zero_stage: int, phase: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPT.parents[2]), str(SCRIPT.parents[1]), env.get("PYTHONPATH")]))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks),
                "--master-port", str(free_port())] if ranks > 1 else [sys.executable]
    run = subprocess.run([*launcher, str(SCRIPT), str(model_dir), str(workdir), str(out), str(zero_stage), phase], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def _same_moments(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for i in a:
        assert a[i].keys() == b[i].keys() and {"exp_avg", "exp_avg_sq", "step"} <= a[i].keys()
        for key in a[i]:
            assert torch.equal(torch.as_tensor(a[i][key]), torch.as_tensor(b[i][key])), f"param group {i}: {key} differs"


@pytest.mark.slow
@pytest.mark.parametrize(("ranks", "zero_stage"), [(2, 2), (1, 2)])
def test_a_restarted_zero_silo_resumes_with_every_ranks_optimiser_moments(tmp_path, ranks, zero_stage):
    """Checkpoint after 2 steps, train 2 more; restart from the checkpoint and train the same 2: each rank's moments after
    the restart are the ones it checkpointed (exactly), and the adapter after the next steps is the same (exactly: the
    same ranks run the same float operations in the same order)."""
    model_dir = base_model_path(FederationConfig(), tmp_path / "cache")
    out = tmp_path / "run"
    _run(model_dir, tmp_path / "silo", out, ranks, zero_stage, "first")
    saved = load_state(tmp_path / "silo").optimizer
    assert isinstance(saved, list) and len(saved) == ranks  # one partition per rank, in one state file
    if ranks > 1:  # each rank's partition holds its half of the flat moments
        sizes = [part["base_optimizer_state"]["state"][0]["exp_avg"].numel() for part in saved]
        assert len(set(sizes)) == 1 and sizes[0] > 0
    _run(model_dir, tmp_path / "silo", out, ranks, zero_stage, "resume")
    for r in range(ranks):
        first = torch.load(f"{out}.first.rank{r}.pt", weights_only=False)
        resumed = torch.load(f"{out}.resume.rank{r}.pt", weights_only=False)
        _same_moments(first, resumed)
        assert float(first[0]["exp_avg_sq"].abs().max()) > 0  # it had trained
    continued, restarted = np.load(f"{out}.first.npz")["adapter"], np.load(f"{out}.resume.npz")["adapter"]
    assert np.array_equal(continued, restarted)
