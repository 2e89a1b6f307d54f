"""Kill -9 the aggregator process between uploads; restarted on the same state it loses and double-counts nothing."""

import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import yaml
from support.aggregator_calls import SAMPLES, config, join_all, make_upload, put
from support.aggregator_harness import free_port

from fedshield.crypto import EnvelopeReader, decrypt_envelope, write_key_pair


def start(config_path, public_path, state_dir, port):
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedshield.cli", "aggregator", "--config", str(config_path), "--public-key", str(public_path),
         "--state-dir", str(state_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise TimeoutError("aggregator did not start")


def test_restart_between_uploads_loses_nothing_and_counts_once(keys, tmp_path):
    _, public_path = write_key_pair(keys, tmp_path / "keys")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config().model_dump(mode="json")))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(config_path, public_path, tmp_path / "state", port)
    try:
        plan = join_all(url)
        data_a, sent_a = make_upload(keys, "bank-a", plan, seed=1)
        assert put(url, 0, "bank-a", data_a).status_code == 200
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc = start(config_path, public_path, tmp_path / "state", port)
        assert httpx.get(f"{url}/v1/status").json()["uploaded"] == ["bank-a"]
        retry = put(url, 0, "bank-a", data_a)  # the silo never saw its receipt and retries
        assert retry.status_code == 200 and retry.json()["duplicate"] is True
        data_b, sent_b = make_upload(keys, "bank-b", plan, seed=2)
        assert put(url, 0, "bank-b", data_b).json()["duplicate"] is False
        aggregate = httpx.get(f"{url}/v1/rounds/0/aggregate")
        assert aggregate.status_code == 200
        head = EnvelopeReader.from_bytes(aggregate.content).header
        assert head.contributors == ("bank-a", "bank-b") and abs(head.weight - 1.0) < 1e-12
        average = decrypt_envelope(keys, EnvelopeReader.from_bytes(aggregate.content), round=0)
        total = SAMPLES["bank-a"] + SAMPLES["bank-b"]
        expected = (SAMPLES["bank-a"] * sent_a + SAMPLES["bank-b"] * sent_b) / total
        assert np.abs(average - expected).max() < 1e-12
    finally:
        proc.kill()
        proc.wait()
