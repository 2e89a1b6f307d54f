"""`fedshield unlearn --run-dir` end to end under mutual TLS with the default approval (one other silo): the forgetting
silo uploads, another silo of the run approves the exact SHA-256 with its own certificate, every silo applies it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.federation_checks import KEEP_UPLOADS, expected_global, saved_shared_vector, wait_for

from fedshield.cli import main
from fedshield.config import FederationConfig, LoraSpec, SiloSpec, TrainingSpec
from fedshield.local.demo import Federation, with_local_ports
from fedshield.silo_agent.checkpoint import load_state

pytestmark = pytest.mark.slow


def test_local_unlearning_is_approved_by_another_silo_and_applied_everywhere(tmp_path, capsys):
    config = with_local_ports(FederationConfig(
        rounds=1, silos=(SiloSpec(name="shop-a"), SiloSpec(name="shop-b")),
        lora=LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj"]), training=TrainingSpec(local_steps=2, batch_size=8),
        aggregation=KEEP_UPLOADS,
    ))
    assert config.privacy.unlearning_approvals == 1
    federation = Federation(config, tmp_path, security="mtls")
    try:
        federation.start()
        wait_for(federation.silos_done, 300, federation)
    finally:
        federation.stop()
    code = main(["unlearn", "--run-dir", str(tmp_path), "--silo", "shop-a", "--fraction", "0.2", "--requested-by", "dpo@shop-a",
                 "--steps", "2", "--augment-steps", "2", "--batch-size", "8"])
    assert code == 0
    out = capsys.readouterr().out  # DeepSpeed may announce its accelerator first
    record = json.loads(out[out.index("{\n"):])
    assert record["silo"] == "shop-a" and record["adapter_version_after"] == config.rounds + 1
    ledger = [json.loads(line) for line in (tmp_path / "unlearning.jsonl").read_text().splitlines()]
    assert [r["sha256"] for r in ledger] == [record["sha256"]]
    assert all(load_state(tmp_path / "silos" / s).unlearnings_applied == 1 for s in config.silo_names)
    layout, _ = expected_global(config, tmp_path)
    a, b = (saved_shared_vector(layout, tmp_path, s) for s in config.silo_names)
    assert np.abs(a - b).max() < 1e-6
