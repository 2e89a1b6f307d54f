"""The unlearning benchmark's summary: means, t-intervals and targets computed from per-seed rows (no run needed)."""


import pytest
from support.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def bench():
    module = load_benchmark("unlearning")
    return module


def fake_row(seed: int, skl: dict[str, float], e2urec_auc: float, advantage: dict[str, float]) -> dict:
    def arm(name: str, auc: float = 0.6) -> dict:
        out = {s: {"auc": auc, "acc": 0.6, "logloss": 0.7} for s in ("forget", "retain", "test")}
        out["membership_advantage"] = advantage.get(name, 0.1)
        out["membership_auc"] = 0.5 + advantage.get(name, 0.1) / 2
        if name != "retrain":
            out["to_retrain"] = {"symmetric_kl": skl[name], "output_l2": skl[name], "weight_l2": 1.0, "bernoulli_jsd": skl[name] / 2}
        return out

    methods = {m: arm(m) for m in ("retrain", "untouched", "neggrad", "bad_teacher")}
    methods["e2urec"] = arm("e2urec", e2urec_auc)
    methods["retrain"] |= {"seconds": 100.0}
    for m in ("neggrad", "bad_teacher", "e2urec"):
        methods[m] |= {"seconds": 5.0, "trainable_parameters": 1000}
    floor = arm("noise_floor", 0.62)
    return {"seed": seed, "methods": methods, "noise_floor": floor, "context": {"model": "tiny"}}


def test_summary_means_intervals_and_targets(bench):
    skl = {"untouched": 0.05, "neggrad": 0.2, "bad_teacher": 0.1, "e2urec": 0.01, "noise_floor": 0.005}
    rows = [fake_row(s, {k: v * (1 + 0.01 * s) for k, v in skl.items()}, 0.61, {"untouched": 0.3, "retrain": 0.1, "e2urec": 0.11})
            for s in range(3)]
    out = bench.summarise(rows)
    assert out["seeds"] == [0, 1, 2] and len(out["per_seed"]) == 3
    e = out["summary"]["e2urec"]["to_retrain.symmetric_kl"]
    assert e["mean"] == pytest.approx(0.01 * 1.01, abs=1e-5) and e["ci95"][0] < e["mean"] < e["ci95"][1]
    assert all(out["targets"].values()), out["targets"]


def test_summary_reports_misses(bench):
    skl = {"untouched": 0.01, "neggrad": 0.2, "bad_teacher": 0.005, "e2urec": 0.02, "noise_floor": 0.03}
    rows = [fake_row(s, skl, 0.5, {"untouched": 0.1, "retrain": 0.1, "e2urec": 0.2}) for s in range(2)]
    t = bench.summarise(rows)["targets"]
    assert t["e2urec_closer_than_neggrad"] and not t["e2urec_closer_to_retrain_than_untouched"]
    assert not t["e2urec_closer_than_bad_teacher"] and not t["beyond_noise_floor"]
    assert not t["test_auc_within_retrain_spread"]  # 0.5 is outside [0.6, 0.62]
    assert not t["membership_advantage_at_most_unseen_plus_0.02"] and not t["untouched_model_memorises_forget_users"]
    assert not t["membership_auc_at_most_unseen_plus_0.02"]  # 0.6 against 0.55 + 0.02


def test_memorisation_is_a_paired_difference_on_the_user_level_attack(bench):
    """Seeds move both models' attack AUC together: the paired difference shows memorisation the two intervals hide."""
    skl = {"untouched": 0.05, "neggrad": 0.2, "bad_teacher": 0.1, "e2urec": 0.01, "noise_floor": 0.005}
    rows = []
    for s, level in enumerate((0.45, 0.6, 0.5, 0.65, 0.55)):
        row = fake_row(s, skl, 0.61, {})
        for arm, gain in (("untouched", 0.03 + 0.002 * s), ("retrain", 0.0), ("e2urec", 0.01)):
            row["methods"][arm]["user_membership_auc"] = level + gain
        rows.append(row)
    out = bench.summarise(rows)
    assert out["attack"] == "user_membership_auc"
    lo, hi = out["summary"]["retrain"]["user_membership_auc"]["ci95"]
    assert out["summary"]["untouched"]["user_membership_auc"]["ci95"][0] < hi  # unpaired intervals overlap
    assert out["memorisation"]["user_membership_auc"]["ci95"][0] > 0.02
    assert out["targets"]["untouched_model_memorises_forget_users"]
    assert out["targets"]["membership_auc_at_most_unseen_plus_0.02"]  # e2urec's 0.01 above retrain
    assert "e2urec_fold" not in out["summary"]  # rows logged before that arm existed


def test_fold_arm_and_its_error_are_summarised(bench):
    skl = {"untouched": 0.05, "neggrad": 0.2, "bad_teacher": 0.1, "e2urec": 0.01, "noise_floor": 0.005, "e2urec_fold": 0.02}
    rows = []
    for s in range(3):
        row = fake_row(s, skl, 0.61, {})
        row["methods"]["e2urec_fold"] = row["methods"]["e2urec"] | {"fold_error_max": 0.1 * (s + 1),
                                                                     "to_retrain": {"symmetric_kl": 0.02}}
        rows.append(row)
    fold = bench.summarise(rows)["summary"]["e2urec_fold"]
    assert fold["fold_error_max"]["mean"] == pytest.approx(0.2)
    assert fold["to_retrain.symmetric_kl"]["mean"] == pytest.approx(0.02)
