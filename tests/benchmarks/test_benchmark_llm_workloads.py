"""The LLM workloads benchmark: its JSON, its CI and target arithmetic, resuming from its log, and one real round.

The fast tests run on a synthetic log and on the tiny random model; the slow one runs one
in-process federation round (CKKS, pruning 0.5) of the instruction workload on SmolLM2.
"""

import json

import numpy as np
import pytest
from support.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def bench():
    module = load_benchmark("llm_workloads")
    return module


def _record(task: str, arm: str, seed: int, scores: list[float]) -> dict:
    silos = ("a", "b", "c")
    return {"task": task, "arm": arm, "seed": seed, "per_silo": dict(zip(silos, scores, strict=False)), "mean": float(np.mean(scores)),
            "metrics": {}, "steps": 0, "wall_s": 1.0, "settings": {"rounds": 1}}


def test_the_report_from_a_log_has_the_promised_shape_intervals_and_targets(bench, tmp_path, capsys):
    # instruction: zero 0.1, local 0.5, federated 0.6 +- (0.58, 0.6, 0.62 over seeds), centralised 0.61
    means = {"zero_shot": [0.1] * 3, "local_only": [0.5] * 3, "federated": [0.58, 0.6, 0.62], "centralised": [0.61] * 3}
    # recommendation: federated below local-only and 0.05 below centralised; zero-shot within 0.02 of federated
    rec = {"zero_shot": [0.69] * 3, "local_only": [0.72] * 3, "federated": [0.7] * 3, "centralised": [0.75] * 3}
    log = tmp_path / "log.jsonl"
    lines = [_record("instruction", arm, s, [v[s]] * 3) for arm, v in means.items() for s in range(3)]
    lines += [_record("recommendation", arm, s, [v[s] - 0.1, v[s], v[s] + 0.1]) for arm, v in rec.items() for s in range(3)]
    lines.append(_record("instruction", "zero_shot", 3, [0.9] * 3))  # a seed cut short: left out of the comparison
    log.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert bench.main(["--from-log", str(log), "--model", "SmolLM2-135M-Instruct"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"model", "seeds", "tasks", "wall_s"} and report["seeds"] == [0, 1, 2]
    assert report["tasks"]["instruction"]["partial_seeds"] == [3] and report["tasks"]["recommendation"]["seeds"] == [0, 1, 2]
    assert report["model"] == "SmolLM2-135M-Instruct" and report["compute_s"] == 25.0
    ins, rc = report["tasks"]["instruction"], report["tasks"]["recommendation"]
    assert ins["metric"] == "exact_match" and rc["metric"] == "auc"
    for block in (ins, rc):
        assert set(block) >= {"zero_shot", "local_only", "federated", "centralised", "ci95", "per_silo", "targets"}
        assert set(block["ci95"]) == set(block["per_silo"]) == set(bench.ARMS)
    assert ins["federated"] == 0.6 and ins["zero_shot"] == 0.1
    half = 4.302653 * 0.02 / np.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert ins["ci95"]["federated"] == pytest.approx([0.6 - half, 0.6 + half], abs=1e-4)
    assert ins["ci95"]["local_only"] == [0.5, 0.5]
    assert ins["targets"] == {"federated_ge_local_only": True, "federated_within_0.02_of_centralised": True,
                              "zero_shot_below_federated": True}
    assert rc["per_silo"]["federated"] == {"a": 0.6, "b": 0.7, "c": 0.8}
    assert rc["targets"] == {"federated_ge_local_only": False, "federated_within_0.02_of_centralised": False,
                             "zero_shot_below_federated": False}


def test_targets_are_none_where_an_arm_is_missing(bench):
    assert bench.targets({"federated": 0.5, "local_only": 0.5}) == {
        "federated_ge_local_only": True, "federated_within_0.02_of_centralised": None, "zero_shot_below_federated": None}
    assert bench.ci95([0.3]) == [0.3, 0.3]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """The tiny random Llama with a word-level tokenizer over both tasks' words."""
    from fedshield.learning.model import build_tiny_base
    from fedshield.workloads import triage
    from fedshield.workloads.recommendation import catalog, prompt_for

    notes = [e.prompt for d in triage.DOMAINS for e in triage.examples(d, 200, 0)]
    corpus = notes + list(triage.DEPARTMENTS) + catalog(seed=0) + [prompt_for(["x"], ["y"], "z")]
    return build_tiny_base(tmp_path_factory.mktemp("tiny") / "tiny", corpus)


def test_a_tiny_run_logs_every_task_arm_and_seed_and_resumes_without_recomputing(bench, tiny_model, tmp_path, capsys,
                                                                                  one_torch_thread, monkeypatch):
    log = tmp_path / "log.jsonl"
    args = ["--model", str(tiny_model), "--seeds", "1", "--rounds", "1", "--local-steps", "1", "--batch-size", "2",
            "--train", "6", "--val", "4", "--log", str(log)]
    assert bench.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert {(r["task"], r["arm"], r["seed"]) for r in logged} == {(t, a, 0) for t in bench.TASKS for a in bench.ARMS}
    assert report["seeds"] == [0] and report["settings"]["rounds"] == 1
    ins = report["tasks"]["instruction"]
    assert set(ins["per_silo"]["federated"]) == set(bench.triage.DOMAINS)
    assert all(0.0 <= ins[a] <= 1.0 for a in bench.ARMS)
    assert {r["steps"] for r in logged if r["arm"] in ("local_only", "federated", "centralised")} == {3}
    # A rerun with the same log computes nothing and prints the same scores.
    monkeypatch.setattr(bench, "run_arm", lambda *a, **k: pytest.fail("recomputed a logged run"))
    assert bench.main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["tasks"] == report["tasks"]


@pytest.mark.slow
def test_one_encrypted_pruned_federation_round_of_the_instruction_workload_on_smollm2(bench, smollm2_dir, tmp_path,
                                                                                      one_torch_thread):
    from fedshield.local.simulation import InProcessFederation
    from fedshield.workloads.base import Split

    settings = {**bench.DEFAULTS, "rounds": 1, "local_steps": 1, "batch_size": 2}
    splits = {name: Split(s.train[:4], s.validation[:3]) for name, s in bench.task_splits("instruction", 0, 4, 3).items()}
    config = bench.bench_config(list(splits), 0, str(smollm2_dir), settings)
    federation = InProcessFederation(config, tmp_path, encrypted=True, workload=bench.task_workload("instruction", 0),
                                     splits=splits)
    before = federation.global_shared.copy()
    result = federation.run_round(0)
    assert abs(result.kept - federation.layout.size / 2) <= 1  # pruning 0.5
    assert all(n > 0 for n in result.upload_bytes.values())  # CKKS envelopes were sent
    assert set(result.metrics) == set(splits)
    assert all({"loss", "perplexity", "exact_match"} <= set(m) for m in result.metrics.values())
    assert result.scores == {name: m["exact_match"] for name, m in result.metrics.items()}
    assert np.any(federation.global_shared != before)  # the decrypted aggregate moved the shared adapter
