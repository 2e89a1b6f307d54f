"""Fault injection on loopback: every faulty run ends with the same global adapter as a fault-free
run of the same seeds, with every round counting each silo's upload exactly once.

Faults: the aggregator killed (SIGKILL, at crash points) after storing an upload and after
writing an aggregate; a silo killed mid-training; connections cut and delayed by a proxy.
All runs use mutual TLS (the proxy passes TLS through).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from support.fault_proxy import FaultProxy, Faults
from support.federation_checks import KEEP_UPLOADS, expected_global, saved_shared_vector, wait_for

from fedshield.config import AggregationSpec, FederationConfig, LoraSpec, PrivacySpec, SiloSpec, TrainingSpec
from fedshield.local.demo import Federation, with_local_ports

pytestmark = pytest.mark.slow
CONFIG = FederationConfig(
    rounds=3, silos=(SiloSpec(name="bank-a"), SiloSpec(name="bank-b")),
    lora=LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj", "lm_head"]),
    training=TrainingSpec(local_steps=4, batch_size=8), privacy=PrivacySpec(pruning=0.5),
    aggregation=AggregationSpec(min_silos=2, round_deadline_seconds=3600, upload_retention_rounds=KEEP_UPLOADS.upload_retention_rounds),
)
# CKKS noise (~1e-7 per aggregate) is the only difference between runs; training carries it on a little.
SAME = 1e-4


def run(out: Path, monkeypatch=None, crash_at: str | None = None, faults: Faults | None = None, kill_silo: bool = False) -> dict:
    """One federation of CONFIG with one kind of fault; returns the silos' final shared vectors and what was counted."""
    config = with_local_ports(CONFIG)
    proxy = FaultProxy(config.aggregator_port, faults) if faults else None
    federation = Federation(config, out, silo_port=proxy.port if proxy else None)
    if crash_at:
        monkeypatch.setenv("FEDSHIELD_CRASH_AT", crash_at)
    try:
        if proxy:
            proxy.__enter__()
        federation.start()
        if crash_at:
            aggregator = federation.procs["aggregator"]
            wait_for(lambda: aggregator.poll() is not None, 300, federation, allow_down=("aggregator",))
            assert aggregator.returncode == -9, "the aggregator should have died at the crash point"
            monkeypatch.delenv("FEDSHIELD_CRASH_AT")
            federation.restart("aggregator")
        if kill_silo:
            # bank-a finished round 0 and is training round 1 (bank-b cannot finish without it)
            wait_for(lambda: any(r["silo"] == "bank-a" for r in federation.records()), 300, federation)
            time.sleep(1.0)
            federation.kill("bank-a")
            federation.restart("bank-a")
        wait_for(federation.silos_done, 600, federation)
    finally:
        federation.stop()
        if proxy:
            proxy.__exit__(None, None, None)
    layout, recomputed = expected_global(config, out)
    vectors = {s: saved_shared_vector(layout, out, s) for s in config.silo_names}
    for vector in vectors.values():  # each silo holds exactly the average of the accepted uploads
        assert np.abs(vector - recomputed).max() < 1e-5
    return {"vectors": vectors, "counted": counted(out), "proxy": proxy}


def counted(out: Path) -> dict[int, list[str]]:
    """Per round, the uploads the aggregator's ledger holds (a silo twice would be a double count)."""
    db = sqlite3.connect(out / "state" / "state.db")
    rows = db.execute("SELECT round, silo FROM uploads ORDER BY round, silo").fetchall()
    closed = {r: json.loads(c) for r, c in db.execute("SELECT round, contributors FROM rounds WHERE closed_at IS NOT NULL")}
    db.close()
    per_round: dict[int, list[str]] = {}
    for r, silo in rows:
        per_round.setdefault(r, []).append(silo)
    assert {r: sorted(c) for r, c in closed.items()} == per_round
    return per_round


@pytest.fixture(scope="module")
def fault_free(tmp_path_factory) -> dict:
    return run(tmp_path_factory.mktemp("fault-free"))


def assert_same_as(fault_free: dict, faulty: dict) -> None:
    everyone = {r: list(CONFIG.silo_names) for r in range(CONFIG.rounds)}
    assert fault_free["counted"] == everyone
    assert faulty["counted"] == everyone  # no accepted upload lost or counted twice
    for silo in CONFIG.silo_names:
        assert np.abs(faulty["vectors"][silo] - fault_free["vectors"][silo]).max() < SAME


def test_aggregator_killed_after_storing_an_upload(tmp_path, monkeypatch, fault_free):
    assert_same_as(fault_free, run(tmp_path, monkeypatch, crash_at="upload-stored"))


def test_aggregator_killed_while_publishing_an_aggregate(tmp_path, monkeypatch, fault_free):
    assert_same_as(fault_free, run(tmp_path, monkeypatch, crash_at="aggregate-written"))


def test_silo_killed_mid_training(tmp_path, fault_free):
    assert_same_as(fault_free, run(tmp_path, kill_silo=True))


def test_connections_cut_and_delayed(tmp_path, fault_free):
    faulty = run(tmp_path, faults=Faults(drop_rate=0.05, delay_rate=0.1, delay_s=0.05, seed=3))
    assert faulty["proxy"].dropped >= 1 and faulty["proxy"].delayed >= 1  # how many depends on timing: chunks are polls too
    assert_same_as(fault_free, faulty)


def test_silo_down_past_the_deadline_rejoins_from_the_global_state(tmp_path):
    """A round closes at its deadline without the dead silo (two others uploaded); restarted, it applies what it missed."""
    silos = (*CONFIG.silos, SiloSpec(name="bank-c"))
    config = with_local_ports(CONFIG.model_copy(update={
        "rounds": 4, "silos": silos, "aggregation": CONFIG.aggregation.model_copy(update={"round_deadline_seconds": 15})}))
    federation = Federation(config, tmp_path)
    try:
        federation.start()
        wait_for(lambda: any(r["silo"] == "bank-a" for r in federation.records()), 300, federation)
        federation.kill("bank-a")
        wait_for(lambda: 1 in closed_rounds(tmp_path), 300, federation, allow_down=("bank-a",))
        federation.restart("bank-a")
        wait_for(federation.silos_done, 600, federation)
    finally:
        federation.stop()
    assert "bank-a" not in counted(tmp_path)[1]  # round 1 closed at its deadline with bank-b and bank-c
    history = sorted((r["round"], r["upload_bytes"]) for r in federation.records() if r["silo"] == "bank-a")
    assert [r for r, _ in history] == [0, 1, 2, 3] and history[1][1] == 0  # caught up on round 1, every round applied once
    layout, recomputed = expected_global(config, tmp_path)
    for silo in config.silo_names:
        assert np.abs(saved_shared_vector(layout, tmp_path, silo) - recomputed).max() < 1e-5


def closed_rounds(out: Path) -> set[int]:
    db = sqlite3.connect(out / "state" / "state.db")
    try:
        return {r for (r,) in db.execute("SELECT round FROM rounds WHERE closed_at IS NOT NULL")}
    except sqlite3.OperationalError:
        return set()
    finally:
        db.close()
