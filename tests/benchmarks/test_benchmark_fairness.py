"""The fairness benchmark: its statistics on known rows, and one quick seed of every arm end to end."""

import pytest
from support.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("fairness")


def _row(bench, seed: int, fedavg_gap: float, balanced_gap: float, lift: float) -> dict:
    names = bench.SILOS
    fedavg = {s: 0.6 + fedavg_gap * i / (len(names) - 1) for i, s in enumerate(names)}
    balanced = {s: 0.6 + (fedavg_gap - balanced_gap) / 2 + lift + balanced_gap * i / (len(names) - 1) for i, s in enumerate(names)}  # same centre
    local = {s: 0.65 for s in names}
    arms = {"fedavg": bench.silo_stats(fedavg, {}), "fedavg_personal": bench.silo_stats(fedavg, {}),
            "dynamic_balance": bench.silo_stats(balanced, {s: 0.8 for s in names}),
            "dynamic_balance_global": bench.silo_stats(balanced, {}), "local_only": bench.silo_stats(local, {})}
    for arm in arms.values():
        arm["worse_than_local"] = sum(arm["per_silo_auc"][s] < local[s] for s in names)
    curve = [0.6] * 10
    return {"seed": seed, "rounds": 10, "encrypted": True, "quick": False, "arms": arms,
            "curves": {"fedavg": curve}, "wall_s": {"fedavg": 1.0, "dynamic_balance": 1.0, "local_only": 1.0}}


def test_gap_reduction_its_interval_and_the_target(bench):
    rows = [_row(bench, s, 0.4, 0.2 + 0.01 * s, 0.02) for s in range(5)]
    report = bench.summarise(rows)
    assert report["seeds"] == [0, 1, 2, 3, 4]
    assert report["gap_reduction_per_seed"] == pytest.approx([0.5, 0.475, 0.45, 0.425, 0.4])
    lo, hi = report["gap_reduction_ci95"]
    assert lo < 0.45 < hi and lo > 0.3
    assert report["mean_auc_diff_vs_fedavg"]["mean"] == pytest.approx(0.02)
    assert report["arms"]["fedavg"]["worse_than_local"]["mean"] == 1  # silo-a (0.6) is below local-only (0.65)
    assert report["arms"]["dynamic_balance"]["ndcg_5_mean"]["mean"] == pytest.approx(0.8)
    assert "ndcg_5_mean" not in report["arms"]["fedavg"]  # no NDCG in those rows: none is reported
    assert report["fedavg_flattened"]["seed_mean"] and report["fedavg_flattened"]["every_seed"] and report["met"]
    lower = bench.summarise([_row(bench, s, 0.4, 0.2, -0.02 - 0.001 * s) for s in range(5)])
    assert not lower["met"]  # the gap closed, but the mean fell beyond its interval


def test_flattened_compares_the_last_window_with_the_one_before(bench):
    assert bench.flattened([0.5] * 5 + [0.505] * 5)
    assert not bench.flattened([0.5] * 5 + [0.55] * 5)
    assert not bench.flattened([0.5] * 9)  # too short to tell


@pytest.mark.slow
def test_one_quick_seed_runs_every_arm(bench):
    row = bench.one_seed(0, rounds=2, encrypted=False, quick=True)
    assert set(row["arms"]) == set(bench.ARMS)
    for arm in row["arms"].values():
        assert set(arm["per_silo_auc"]) == set(bench.SILOS) and 0 <= arm["worse_than_local"] <= len(bench.SILOS)
        assert 0 <= arm["auc"]["gap"] <= 1 and arm["auc"]["worst"] <= arm["auc"]["mean"]
    assert row["arms"]["local_only"]["worse_than_local"] == 0
    assert len(row["curves"]["fedavg"]) == len(row["curves"]["local_only"]) == 2
    assert set(row["arms"]["dynamic_balance_global"]["final_weights"]) == set(bench.SILOS)
    assert bench.summarise([row])["seeds"] == [0]
