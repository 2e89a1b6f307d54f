"""The instruction workload end to end: silo agents read their own JSONL folders, train on response tokens, report
exact match, and upload the score of the global model each round started from (on the tiny model, which learns the
label prior only; tests/learning/test_federation_smollm2.py and the LLM demo show a real model learning the task); bad files stop a silo before it joins."""

import json

import pytest

from fedshield.config import FederationConfig, LoraSpec, PrivacySpec, SiloSpec, TrainingSpec
from fedshield.local.demo import run_local
from fedshield.silo_agent.agent import SiloAgent
from fedshield.workloads import triage
from fedshield.workloads.base import DataError

pytestmark = pytest.mark.slow


def _config(data, rounds=2, **kw) -> FederationConfig:
    folders = triage.write_silos(data, train=48, validation=16, domains=("emergency", "childrens-clinic"))
    return FederationConfig(
        name="triage", workload="instruction", rounds=rounds,
        silos=tuple(SiloSpec(name=n, data_path=str(p), samples=48) for n, p in folders.items()),
        lora=LoraSpec(target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "lm_head")),
        training=TrainingSpec(local_steps=20, batch_size=8, learning_rate=3e-3), privacy=PrivacySpec(pruning=0.5), **kw)


def test_silos_learn_the_triage_task_from_their_own_files(tmp_path):
    config = _config(tmp_path / "data", rounds=3)
    report = run_local(config, tmp_path / "run")
    summary, rounds = report["summary"], report["rounds"]
    assert summary["workload"] == "instruction" and summary["metric"] == "exact_match"
    for r in rounds:
        for row in r["silos"].values():
            assert set(row["metrics"]) == {"loss", "perplexity", "token_accuracy", "exact_match"}
            assert row["score"] == row["metrics"]["exact_match"] and row["loss"] == row["metrics"]["loss"]
    # each round starts from the global model the last one ended with: that is what the silo reported
    for before, after in zip(rounds, rounds[1:], strict=False):
        for silo, row in after["silos"].items():
            assert row["start_score"] == before["silos"][silo]["score"]
            assert row["start_metrics"] == before["silos"][silo]["metrics"]
    # The tiny random model learns the departments' prior, not the notes (SmolLM2 learns those: make demo-llm).
    for silo, row in rounds[0]["silos"].items():
        assert row["loss"] < row["start_metrics"]["loss"] - 1.0, (silo, row)
    records = [json.loads(line) for line in (tmp_path / "run" / "silos" / "emergency" / "metrics.jsonl").read_text().splitlines()]
    assert [r["metric"] for r in records] == ["exact_match"] * 3 and all(r["train_tokens"] > 0 for r in records)


def test_a_bad_line_stops_the_silo_before_it_joins(tmp_path, keys):
    config = _config(tmp_path / "data")
    bad = tmp_path / "data" / "emergency" / "train.jsonl"
    lines = bad.read_text().splitlines()
    lines[6] = json.dumps({"prompt": "a note without its answer"})
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"emergency/train.jsonl:7: missing field 'response'"):
        SiloAgent(config, "emergency", keys, tmp_path / "silo", "http://127.0.0.1:9")  # nothing listens: never contacted


def test_an_example_longer_than_the_context_stops_the_silo_before_it_joins(tmp_path, keys):
    config = _config(tmp_path / "data")
    long = tmp_path / "data" / "childrens-clinic" / "validation.jsonl"
    long.write_text(json.dumps({"prompt": " ".join(["wheeze"] * 400), "response": "pulmonology"}) + "\n")
    with pytest.raises(DataError, match=r"childrens-clinic/validation.jsonl:1: the example has \d+ tokens .* context is 256"):
        SiloAgent(config, "childrens-clinic", keys, tmp_path / "silo", "http://127.0.0.1:9")
