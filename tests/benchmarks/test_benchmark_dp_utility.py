"""The DP utility benchmark: zero-shot is the untrained adapter, DP arms use the default sampling rate, a logged run resumes."""

import json

import pytest
from support.benchmarks import load_benchmark

from fedshield.privacy import default_sampling_rate


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("dp_utility")


def _row(eps, seed, final, start=0.5, first=0.6, clip=None, rounds=5):
    return {"epsilon": eps, "seed": seed, "mean_auc": final, "mean_auc_by_round": [first, final], "start_mean_auc": start,
            "clip_norm": clip, "rounds": rounds, "noise_multiplier": None if eps is None else 1.0}


def test_zero_shot_is_the_untrained_adapter_not_round_0_after_training(bench):
    rows = [_row(None, 0, 0.7), _row(None, 1, 0.7), _row(8.0, 0, 0.65), _row(8.0, 1, 0.65)]
    report = bench.summarise(rows, "record", None)
    assert report["zero_shot"] == 0.5  # not 0.6, the first round's score after local training
    assert report["non_private"] == 0.7
    assert report["gain_kept_at_8"] == pytest.approx(0.75)


def test_dp_arms_use_the_default_sampling_rate(bench):
    cfg = bench.arm_config(0, 5, 8.0, "record")
    records = len(bench.silo_examples(cfg, cfg.silo_names[0])[0])
    params = bench.dp_parameters(cfg, 8.0)
    assert params["sampling_rate"] == round(default_sampling_rate(cfg.training.batch_size, records), 4)
    assert params["steps"] == 5 * cfg.training.local_steps
    assert bench.arm_config(0, 5, 8.0, "record").privacy.dp.clip_norm == bench.CLIP_NORM


def test_a_logged_run_resumes_and_ignores_rows_of_another_setting(bench, tmp_path, monkeypatch, capsys):
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [
        _row(None, 0, 0.7, clip=bench.CLIP_NORM), _row(8.0, 0, 0.6, clip=bench.CLIP_NORM),
        _row(4.0, 0, 0.1, clip=bench.CLIP_NORM + 1)]) + "\n")
    ran = []
    monkeypatch.setattr(bench, "run", lambda cfg: ran.append(cfg.privacy.dp.target_epsilon) or {
        "mean_auc": 0.55, "mean_auc_by_round": [0.55], "start_mean_auc": 0.5})
    monkeypatch.setattr(bench, "dp_parameters", lambda cfg, eps: {"noise_multiplier": 1.0, "sampling_rate": 0.1, "steps": 100})
    monkeypatch.setattr(bench, "step_seconds", lambda: None)
    assert bench.main(["--seeds", "1", "--log", str(log)]) == 0
    assert sorted(ran) == [1.0, 2.0, 4.0]  # 8 and no-DP were logged at this clip norm; the other clip norm's 4 is redone
    report = json.loads(capsys.readouterr().out)
    assert [a["epsilon"] for a in report["arms"]] == [1.0, 2.0, 4.0, 8.0, None]
    assert len(log.read_text().splitlines()) == 6


@pytest.mark.slow
def test_quick_dp_utility_benchmark_prints_the_promised_json(bench, capsys):
    assert bench.main(["--quick"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # DeepSpeed may print its op build notice first
    assert report["unit"] == "record" and report["seeds"] == [0] and report["clip_norm"] == bench.CLIP_NORM
    assert {"epsilon", "noise_multiplier", "sampling_rate", "steps", "metric", "ci95"} <= set(report["arms"][0])
    assert report["zero_shot"] is not None and report["step_seconds"]["ratio"] > 0


def test_the_instruction_tasks_dp_arms_are_read_from_the_llm_benchmarks_log(bench):
    def rec(arm, seed, mean, **dp):
        return {"task": "instruction", "arm": arm, "seed": seed, "mean": mean, "model": "SmolLM2", **dp}

    dp = {"noise_multiplier": 0.9, "sampling_rate": 0.13, "dp_steps": 24}
    records = [rec("zero_shot", s, 0.0) for s in (0, 1, 2)] + [rec("federated", s, 0.8) for s in (0, 1)] + \
        [rec("federated", 2, 0.2)] + \
        [rec("federated_dp8", 0, 0.7, **dp), rec("federated_dp8", 1, 0.74, **dp), rec("local_only", 0, 0.9)] + \
        [{"task": "recommendation", "arm": "federated", "seed": 0, "mean": 0.6}]
    report = bench.instruction_report(records)
    assert report["unit"] == "record" and report["task"] == "instruction" and report["seeds"] == [0, 1]
    assert [a["epsilon"] for a in report["arms"]] == [8.0, None]
    assert report["arms"][0] | {"ci95": None} == {"epsilon": 8.0, "noise_multiplier": 0.9, "sampling_rate": 0.13, "steps": 24,
                                                  "metric": 0.72, "ci95": None, "per_seed": {"0": 0.7, "1": 0.74}}
    assert report["non_private"] == 0.8 and report["zero_shot"] == 0.0 and report["gain_kept_at_8"] == 0.9  # seed 2: no DP run
    assert report["model"] == "SmolLM2"
