"""Kill -9 a silo mid-federation: restarted, it resumes from its checkpoint and the result is unchanged."""


import httpx
import numpy as np
import pytest
from support.federation_checks import KEEP_UPLOADS, expected_global, saved_shared_vector, wait_for

from fedshield.config import FederationConfig, SiloSpec, TrainingSpec
from fedshield.local.demo import Federation, with_local_ports

pytestmark = pytest.mark.slow


def test_killed_silo_resumes_from_its_checkpoint(tmp_path):
    config = with_local_ports(FederationConfig(
        rounds=3, silos=(SiloSpec(name="bank-a"), SiloSpec(name="bank-b")), training=TrainingSpec(local_steps=6, batch_size=8),
        aggregation=KEEP_UPLOADS,
    ))
    federation = Federation(config, tmp_path)
    try:
        federation.start()
        # both silos finished round 0 (so both exported metrics); bank-b then waits for bank-a in round 1
        wait_for(lambda: {r["silo"] for r in federation.records()} == {"bank-a", "bank-b"}, 180, federation)
        # every process serves Prometheus metrics on its own port (bank-b cannot finish without bank-a)
        scraped = httpx.get(f"http://127.0.0.1:{config.aggregator_metrics_port}/metrics").text
        assert 'fedshield_aggregator_uploads_accepted_total{silo="bank-a"}' in scraped
        silo_port = next(s.metrics_port for s in config.silos if s.name == "bank-b")
        assert 'fedshield_silo_validation_score{silo="bank-b"}' in httpx.get(f"http://127.0.0.1:{silo_port}/metrics").text
        federation.kill("bank-a")
        federation.restart("bank-a")
        wait_for(federation.silos_done, 300, federation)
    finally:
        federation.stop()
    rounds = sorted(r["round"] for r in federation.records() if r["silo"] == "bank-a")
    assert rounds == [0, 1, 2]  # every round applied once, none repeated
    layout, expected = expected_global(config, tmp_path)
    for silo in config.silo_names:
        assert np.abs(saved_shared_vector(layout, tmp_path, silo) - expected).max() < 1e-5
