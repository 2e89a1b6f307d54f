"""A silo with nodes: 2 in a local federation (issue #20): two ranks under torchrun (gloo on CPU), rank 0 alone talking
to the aggregator; killed rank 1 makes torchrun restart the group, and the round still counts exactly once."""

import os
import re
import signal
import sqlite3
from pathlib import Path

import numpy as np
import psutil
import pytest
from support.federation_checks import KEEP_UPLOADS, expected_global, rank_pid, saved_shared_vector, wait_for

from fedshield.config import FederationConfig, SiloSpec, TrainingSpec
from fedshield.local.demo import Federation, run_local, with_local_ports
from fedshield.silo_agent.checkpoint import load_state

pytestmark = pytest.mark.slow


def _config(rounds: int, steps: int, zero_stage: int = 0) -> FederationConfig:
    return FederationConfig(rounds=rounds, silos=(SiloSpec(name="bank-a", nodes=2), SiloSpec(name="bank-b")),
                            training=TrainingSpec(local_steps=steps, batch_size=8, zero_stage=zero_stage),
                            aggregation=KEEP_UPLOADS)


def _ledger(out: Path) -> tuple[list[tuple[int, str]], dict[int, str]]:
    """The aggregator's accepted uploads (round, silo) and each round's contributors."""
    with sqlite3.connect(out / "state" / "state.db") as db:
        uploads = db.execute("SELECT round, silo FROM uploads ORDER BY round, silo").fetchall()
        contributors = dict(db.execute("SELECT round, contributors FROM rounds").fetchall())
    return uploads, contributors


def _check_global(config: FederationConfig, out: Path) -> None:
    layout, expected = expected_global(config, out)
    for silo in config.silo_names:
        assert np.abs(saved_shared_vector(layout, out, silo) - expected).max() < 1e-5


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_a_two_rank_silo_completes_its_rounds(tmp_path, zero_stage):
    """Stage 2: both ranks' optimiser partitions are gathered into bank-a's checkpoint every round. Stage 3: the
    parameters are partitioned too; every read of the adapter (upload, checkpoint, saved adapter) is a gather and every
    evaluation runs on both ranks, and the saved adapter is the global one."""
    config = _config(rounds=2, steps=3, zero_stage=zero_stage)
    report = run_local(config, tmp_path, security="none")
    assert report["summary"]["rounds"] == 2
    for r in report["rounds"]:
        assert set(r["silos"]) == {"bank-a", "bank-b"}
    uploads, _ = _ledger(tmp_path)
    assert uploads == [(r, s) for r in range(2) for s in ("bank-a", "bank-b")]
    _check_global(config, tmp_path)
    log = (tmp_path / "logs" / "bank-a.log").read_text()
    assert log.count("bank-a joined") == 1  # rank 0 alone joined (and talked to the aggregator)
    saved = load_state(tmp_path / "silos" / "bank-a")
    assert saved is not None and saved.round_done == 1
    # ZeRO 2-3: one optimiser partition per rank; stage 0: the one state dict every rank shares
    assert (len(saved.optimizer) == 2) if zero_stage else isinstance(saved.optimizer, dict)
    assert all(t.numel() > 0 for t in saved.lora.values())  # whole LoRA tensors, not this rank's partition


def _bank_a_rounds(federation: Federation) -> int:
    return sum(r["silo"] == "bank-a" for r in federation.records())


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_killed_rank_1_restarts_the_group_and_the_round_counts_once(tmp_path, zero_stage):
    """Rank 1 killed in round 1: torchrun restarts both ranks. Then the whole silo (torchrun and its ranks) killed in
    round 2 and started again, as a one-process silo is in test_federation_faults. Every round counts once. ZeRO 2: the
    restarted ranks each take their optimiser partition back from rank 0's checkpoint."""
    config = with_local_ports(_config(rounds=3, steps=24, zero_stage=zero_stage))
    federation = Federation(config, tmp_path, security="none")
    try:
        federation.start()
        wait_for(lambda: _bank_a_rounds(federation) == 1, 300, federation)
        os.kill(rank_pid(federation, "bank-a", 1), signal.SIGKILL)  # in round 1: training, or waiting for rank 0's order
        wait_for(lambda: _bank_a_rounds(federation) == 2, 300, federation)
        ranks = [psutil.Process(rank_pid(federation, "bank-a", r)) for r in (0, 1)]
        federation.kill("bank-a")
        _, alive = psutil.wait_procs(ranks, timeout=10)
        assert not alive  # no orphaned rank
        federation.restart("bank-a")
        wait_for(federation.silos_done, 600, federation)
    finally:
        federation.stop()
    rounds = [r["round"] for r in federation.records() if r["silo"] == "bank-a"]
    assert rounds == [0, 1, 2]  # every round applied once, none repeated
    uploads, contributors = _ledger(tmp_path)
    assert uploads == [(r, s) for r in range(3) for s in ("bank-a", "bank-b")]  # one upload per silo and round
    assert all("bank-a" in contributors[r] for r in range(3))
    log = (tmp_path / "logs" / "bank-a.log").read_text()
    assert log.count("bank-a joined") == 3  # rank 0 joined again after torchrun's restart and after the silo's
    joins = [m.start() for m in re.finditer("bank-a joined", log)]
    assert joins[1] < log.index("/v1/rounds/1/uploads/bank-a")  # killed mid-round 1: its upload came from the restarted group
    _check_global(config, tmp_path)
