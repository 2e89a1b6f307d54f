"""The quick benchmark runs end to end and its JSON has the promised shape (no timing asserted)."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "he_updates.py"


@pytest.mark.slow
def test_quick_benchmark_prints_the_promised_json(capsys):
    spec = importlib.util.spec_from_file_location("he_updates", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["silos"] == 10 and report["params"] == 262_144
    rows = {(r["method"], r["pruning"]): r for r in report["results"]}
    assert set(rows) == {(m, p) for m in ("fedshield", "naive") for p in (0.0, 0.5, 0.9, 0.99)}
    keys = {"upload_bytes", "bytes_per_kept_param", "encrypt_s", "aggregate_s", "decrypt_s", "max_abs_error"}
    assert all(keys <= set(r) for r in rows.values())
    # Pruning shrinks FedShield's upload in proportion; the dense baseline does not shrink.
    assert rows["fedshield", 0.5]["upload_bytes"] == pytest.approx(rows["fedshield", 0.0]["upload_bytes"] / 2, rel=0.01)
    assert rows["naive", 0.9]["upload_bytes"] == rows["naive", 0.0]["upload_bytes"]
    # Dense, FedShield's packing alone is 3.8x smaller than the baseline (15 vs 57 bytes per value).
    assert rows["fedshield", 0.0]["upload_bytes"] * 3.5 < rows["naive", 0.0]["upload_bytes"]
    assert all(rows["fedshield", p]["max_abs_error"] <= 1e-6 for p in (0.0, 0.5, 0.9, 0.99))
