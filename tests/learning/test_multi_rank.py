"""A silo split over ranks (issue #20): torchrun with 2 processes (gloo on CPU) trains the adapter a single process does."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedshield.config import FederationConfig, TrainingSpec
from fedshield.learning.data import base_model_path
from fedshield.learning.training import check_batch_split, deepspeed_config
from fedshield.local.demo import free_port

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "rank_training.py"
TOLERANCE = 1e-5


def _env() -> dict:
    """This environment without a torchrun world of its own, with the repository and tests/support importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPT.parents[2]), str(SCRIPT.parents[1]), env.get("PYTHONPATH")]))
    return env


def _train(model_dir: Path, out: Path, ranks: int, steps: int = 4, batch_size: int = 8, zero_stage: int = 0) -> dict:
    env = _env()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks),
                "--master-port", str(free_port())] if ranks > 1 else [sys.executable]
    run = subprocess.run([*launcher, str(SCRIPT), str(model_dir), str(out), str(steps), str(batch_size), str(zero_stage)],
                         env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return dict(np.load(out))


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_two_ranks_train_the_adapter_one_process_does(tmp_path, zero_stage):
    """Same seed, data and batches: every rank takes half of each batch and the engine averages the two gradients.

    Under ZeRO 1 and 2 each rank steps its half of the optimiser state (and, at stage 2, reduces only its gradient
    partition) and the updated halves are gathered back into the parameters every rank holds: the same adapter. ZeRO 3
    partitions the parameters too (gathered for every forward pass, and here to read the adapter): it trains the same
    adapter as well (the silo agent runs it on several ranks: docs/operator.md).

    Tolerance 1e-5 (max abs difference of any LoRA value, 4 AdamW steps at lr 2e-3): the mean of two half-batch mean
    gradients equals the full-batch mean gradient up to float32 rounding (~1e-7 relative), which Adam's normalisation
    can magnify on near-zero gradient coordinates; measured on this machine 3.1e-6 at ZeRO stages 0, 1 and 2, 5.6e-6
    at 3. Ranks that each trained the whole batch would give the same adapter, so each rank must also have seen half of
    the examples.
    """
    model_dir = base_model_path(FederationConfig(), tmp_path / "cache")
    one = _train(model_dir, tmp_path / "one.npz", ranks=1, zero_stage=zero_stage)
    two = _train(model_dir, tmp_path / "two.npz", ranks=2, zero_stage=zero_stage)
    assert np.abs(one["adapter"]).max() > 0.01  # it trained
    print(f"ZeRO {zero_stage}: max |one - two| = {np.abs(one['adapter'] - two['adapter']).max():.3g}")
    assert np.abs(one["adapter"] - two["adapter"]).max() <= TOLERANCE
    assert abs(float(one["loss"]) - float(two["loss"])) <= TOLERANCE
    assert int(one["tokens"]) == int(two["tokens"])  # the whole batch's, summed over the ranks
    seen = [int((tmp_path / f"{name}.npz.rank{r}").read_text()) for name, r in (("one", 0), ("two", 0), ("two", 1))]
    assert seen == [4 * 8, 4 * 4, 4 * 4]


def test_each_rank_gets_an_even_share_of_the_batch(monkeypatch):
    assert check_batch_split(16, 4) == 4
    with pytest.raises(ValueError, match=r"training.batchSize \(batch_size=6\) must divide by the world size .*: this silo \(4 ranks\)$"):
        check_batch_split(6, 4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = deepspeed_config(TrainingSpec(batch_size=8))
    assert (config["train_batch_size"], config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (8, 4, 1)


@pytest.mark.slow
def test_zero3_ranks_decode_in_lockstep_although_their_logits_disagree(tmp_path):
    """Under ZeRO-3 each forward pass gathers parameters from every rank: a rank that stopped decoding early (its own
    argmax hit a stop token) would leave the others waiting in their next gather. Forced to disagree, rank 0 (stop
    token at once) still runs every pass the other rank runs, and each rank's replies are its own."""
    model_dir = base_model_path(FederationConfig(), tmp_path / "cache")
    env = _env()
    out = tmp_path / "decode"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                          "--master-port", str(free_port()), str(SCRIPT.parent / "rank_decoding.py"), str(model_dir), str(out), "5"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"decode.rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["passes"] == ranks[1]["passes"] == 5  # without the agreement: 1 on rank 0, and rank 1 hangs
    assert ranks[0]["replies"] == ["", ""] and all(len(r.split()) >= 1 for r in ranks[1]["replies"])
