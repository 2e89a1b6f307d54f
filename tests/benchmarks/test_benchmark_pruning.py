"""The pruning benchmark's smoke run prints the promised JSON (no accuracy asserted: that needs the full run)."""

import json

import pytest
from support.benchmarks import load_benchmark


@pytest.mark.slow
def test_quick_pruning_benchmark_prints_the_promised_json(capsys):
    module = load_benchmark("pruning")
    assert module.main(["--quick", "--arms", "plain_fedavg", "p0.9", "p0.9_4digits"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["seeds"] == [0] and report["rounds"] == 2
    arms = {a["name"]: a for a in report["arms"]}
    assert set(arms) == {"plain_fedavg", "p0.9", "p0.9_4digits"}
    keys = {"name", "pruning", "digits_per_slot", "encrypted", "mean_auc", "mean_auc_ci95", "rounds_to_plain_final",
            "upload_bytes_per_round", "bytes_per_kept_param", "coverage_after_rounds"}
    assert all(keys <= set(a) for a in arms.values())
    assert arms["plain_fedavg"]["encrypted"] is False and arms["plain_fedavg"]["upload_bytes_per_round"] == 0
    assert arms["plain_fedavg"]["coverage_after_rounds"] == 1.0
    # Round 0 sends k coordinates, round 1 the next explore window: coverage (k + k/2) / size.
    assert arms["p0.9"]["coverage_after_rounds"] == pytest.approx(0.15, abs=0.001)
    assert arms["p0.9_4digits"]["bytes_per_kept_param_full"] == 7.5
    assert report["plain_fedavg_mean_auc"] == arms["plain_fedavg"]["mean_auc"]
