"""A silo restarted from its checkpoint under ZeRO 1-3 resumes with the optimiser moments it had (issue #20).

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
@pytest.mark.parametrize(("ranks", "zero_stage"), [(2, 2), (1, 2), (2, 3), (1, 3)])
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
        key = "base_optimizer_state" if zero_stage < 3 else "optimizer_state_dict"  # DeepSpeed's stage 1-2 / 3 layouts
        sizes = [part[key]["state"][0]["exp_avg"].numel() for part in saved]
        assert len(set(sizes)) == 1 and sizes[0] > 0
    _run(model_dir, tmp_path / "silo", out, ranks, zero_stage, "resume")
    for r in range(ranks):
        first = torch.load(f"{out}.first.rank{r}.pt", weights_only=False)
        resumed = torch.load(f"{out}.resume.rank{r}.pt", weights_only=False)
        _same_moments(first, resumed)
        assert float(first[0]["exp_avg_sq"].abs().max()) > 0  # it had trained
    continued, restarted = np.load(f"{out}.first.npz")["adapter"], np.load(f"{out}.resume.npz")["adapter"]
    assert np.array_equal(continued, restarted)


def _engine(tmp_path, zero_stage: int):
    from fedshield.config import TrainingSpec
    from fedshield.learning.model import load_base, with_lora
    from fedshield.learning.training import create_engine, train_local_stats
    from fedshield.workloads.recommendation import Example

    base, tokenizer = load_base(base_model_path(FederationConfig(), tmp_path / "cache"))
    engine = create_engine(with_lora(base, 2, 4, 0.0, ("q_proj", "v_proj"), seed=0), TrainingSpec(zero_stage=zero_stage, batch_size=4))
    examples = [Example(f"the user liked a and disliked b . will the user like c{i}", i % 2, "u") for i in range(8)]
    train_local_stats(engine, tokenizer, examples, 1, 4, seed=0)  # the optimiser has moments
    return engine


def test_one_process_checkpoints_load_and_partitions_do_not_move_between_settings(tmp_path):
    """A one-process ZeRO checkpoint written before the partitions were listed (the bare state dict) still loads;
    a checkpoint from another world size, or from an optimiser that does (not) partition, is refused by name."""
    from fedshield.learning.training import load_optimizer_state, optimizer_state

    zero = _engine(tmp_path, 2)
    bare = zero.optimizer.state_dict()
    assert isinstance(optimizer_state(zero), list) and len(optimizer_state(zero)) == 1
    fresh = _engine(tmp_path, 2)
    load_optimizer_state(fresh, bare)
    assert torch.equal(fresh.optimizer.optimizer.state_dict()["state"][0]["exp_avg"], bare["base_optimizer_state"]["state"][0]["exp_avg"])
    with pytest.raises(ValueError, match="partitioned over 2 ranks and this silo runs 1: restart it with the number of ranks"):
        load_optimizer_state(fresh, [bare, bare])
    plain = _engine(tmp_path, 0)
    assert isinstance(optimizer_state(plain), dict)
    with pytest.raises(ValueError, match="written with a training.zeroStage / training.precision that partitions it"):
        load_optimizer_state(plain, [bare])
    with pytest.raises(ValueError, match="that does not partition it, unlike this silo's \\(DeepSpeedZeroOptimizer\\)"):
        load_optimizer_state(fresh, plain.optimizer.state_dict())


def test_a_one_process_run_on_a_multi_rank_checkpoint_that_does_not_train_keeps_its_moments(tmp_path, keys):
    """Unlearning and applying a published unlearning run as one process on a multi-rank silo's checkpoint: they never
    train, so the moments (2 partitions here) are neither loaded nor replaced; training on it is refused by name."""
    from fedshield.config import TrainingSpec
    from fedshield.learning.training import train_local_stats
    from fedshield.silo_agent.agent import SiloAgent
    from fedshield.silo_agent.checkpoint import save_state

    config = FederationConfig(training=TrainingSpec(zero_stage=2, batch_size=8, local_steps=2))
    workdir = tmp_path / "silo"

    def agent() -> SiloAgent:
        return SiloAgent(config, "clinic-a", keys, workdir, "http://127.0.0.1:9", model_cache=tmp_path / "cache")

    first = agent()
    first._resume_moments()
    train_local_stats(first.engine, first.tokenizer, first.train, 2, 8, seed=0, workload=first.workload)
    first._checkpoint()
    state = load_state(workdir)
    assert isinstance(state.optimizer, list) and len(state.optimizer) == 1
    state.optimizer = [state.optimizer[0], state.optimizer[0]]  # as two ranks write it
    save_state(workdir, state)
    second = agent()  # before issue #20's fix: refused here, at start
    second._checkpoint()
    assert len(load_state(workdir).optimizer) == 2  # kept as it was
    with pytest.raises(ValueError, match="partitioned over 2 ranks and this silo runs 1"):
        second._resume_moments()
    second.forget_local_state({})  # an unlearning here: no moments computed from the forgotten records survive
    assert load_state(workdir).optimizer is None
    agent()._resume_moments()  # fresh moments: training may go on
