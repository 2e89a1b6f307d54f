"""The quick benchmark runs end to end and its JSON has the promised shape (no timing asserted)."""

import json

import pytest
from support.benchmarks import load_benchmark


@pytest.mark.slow
def test_quick_benchmark_prints_the_promised_json(capsys):
    module = load_benchmark("he_updates")
    assert module.main(["--quick"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["silos"] == 10 and report["params"] == 262_144
    rows = {(r["method"], r["pruning"]): r for r in report["results"]}
    methods = ("fedshield", "fedshield_4digits", "naive_flare", "naive_fedshield_llm")
    assert set(rows) == {(m, p) for m in methods for p in (0.0, 0.5, 0.9, 0.99)}
    keys = {"upload_bytes", "bytes_per_kept_param", "encrypt_s", "aggregate_s", "decrypt_s", "max_abs_error"}
    assert all(keys <= set(r) for r in rows.values())
    # Pruning shrinks FedShield's upload in proportion; the dense baselines do not shrink.
    assert rows["fedshield", 0.5]["upload_bytes"] == pytest.approx(rows["fedshield", 0.0]["upload_bytes"] / 2, rel=0.01)
    assert rows["naive_flare", 0.9]["upload_bytes"] == rows["naive_flare", 0.0]["upload_bytes"]
    # Dense, FedShield's packing alone is 3.8x smaller than FLARE's settings (15 vs 57 bytes per value),
    # 4 digits per slot halve it again, and FedShield-LLM's settings cost more than FLARE's.
    assert rows["fedshield", 0.0]["upload_bytes"] * 3.5 < rows["naive_flare", 0.0]["upload_bytes"]
    assert rows["fedshield_4digits", 0.0]["bytes_per_kept_param"] <= 8
    assert rows["naive_fedshield_llm", 0.0]["upload_bytes"] > rows["naive_flare", 0.0]["upload_bytes"]
    for method in ("fedshield", "fedshield_4digits"):
        for p in (0.0, 0.5, 0.9, 0.99):
            row = rows[method, p]
            for gain in row["gain_over"].values():
                assert gain["total"] == pytest.approx(gain["packing"] * gain["sparsity"], rel=1e-2)
            assert row["gain_over"]["naive_flare"]["sparsity"] == pytest.approx(1 / (1 - p), rel=1e-3)
    assert all(rows["fedshield", p]["max_abs_error"] <= 1e-6 for p in (0.0, 0.5, 0.9, 0.99))
    # Stochastic rounding: each silo's weighted value is off by less than one integer unit, so the average
    # (weights summing to 1) by less than silos * step; error feedback carries it to the next round.
    from fedshield.crypto import CkksParams, PackingParams

    step = PackingParams(digits_per_slot=4).step(CkksParams())
    assert all(rows["fedshield_4digits", p]["max_abs_error"] < report["silos"] * step for p in (0.0, 0.5, 0.9, 0.99))
