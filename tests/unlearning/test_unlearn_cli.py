"""`fedshield unlearn` refuses incomplete or contradictory requests before touching anything."""

import subprocess
import sys

import pytest
import yaml

from fedshield.config import FederationConfig
from fedshield.local.unlearning import unlearn_local
from fedshield.silo_agent.forget import ForgetRequest


def fedshield(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedshield.cli", *args], capture_output=True, text=True, timeout=120)


def test_users_and_fraction_are_exclusive(tmp_path):
    both = fedshield("unlearn", "--run-dir", str(tmp_path), "--silo", "a", "--users", "u1", "--fraction", "0.2", "--requested-by", "me")
    neither = fedshield("unlearn", "--run-dir", str(tmp_path), "--silo", "a", "--requested-by", "me")
    for result in (both, neither):
        assert result.returncode != 0 and "--fraction" in result.stderr


def test_silo_mode_names_what_is_missing(tmp_path):
    result = fedshield("unlearn", "--silo", "a", "--users", "u1", "--requested-by", "me")
    assert result.returncode == 2 and "--config" in result.stderr and "--aggregator" in result.stderr


def test_local_mode_needs_a_finished_run_and_a_known_silo(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished local run"):
        unlearn_local(tmp_path, "clinic-a", ForgetRequest(users=("u1",)))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.db").write_bytes(b"")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(FederationConfig().model_dump(mode="json")))
    with pytest.raises(ValueError, match="silo 'nobody' is not in"):
        unlearn_local(tmp_path, "nobody", ForgetRequest(users=("u1",)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "state"]  # nothing else was created
