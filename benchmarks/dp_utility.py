"""Utility of DP-LoRA by the unit it protects: record-level DP-SGD at several epsilons, against no DP and the untrained adapter.

The fairness benchmark's split (5 non-IID synthetic silos, ``federation_split``), the local
federation (processes, CKKS, pruning 0.5). Each arm trains with record-level DP-SGD inside
every silo (Poisson sampling at the default rate q = 4 * batch / records, per-record clipping
to C, sigma calibrated with the PLD accountant for the target epsilon over every step of
every round, delta 1e-5); ``--unit silo`` measures silo-level DP (noise once per round on the
update) instead. Per-step wall time of DP-SGD against plain training is measured in-process
on the same model.

C = 3: the median per-record LoRA gradient norm of the tiny model at the untrained adapter
(2.9; 2.3 to 2.8 after 20 to 100 plain steps), measured once by ``benchmarks/dp_grad_norms.py``
(Abadi et al.'s choice of C). At C = 1 every record was clipped (docs/privacy.md).

The zero-shot reference is the untrained adapter: each silo's score of the global model
round 0 starts from (``start_mean_auc``), before any local training.

Prints one JSON object: {"unit", "delta", "clip_norm", "seeds", "arms": [{"epsilon", "noise_multiplier",
"sampling_rate", "steps", "metric", "ci95", "per_seed"}], "non_private", "zero_shot",
"gain_kept_at_8", "step_seconds": {...}}. ``--log`` appends each finished (epsilon, seed) as a JSON
line and skips those already there (a killed run resumes); ``--from-log`` summarises a log without
running. ``--quick``: 1 seed, 2 rounds, epsilon 8 only.

The real-LLM instruction task (SmolLM2, the triage task, exact match) runs in ``benchmarks/llm_workloads.py`` with
``--arms zero_shot federated federated_dp8 federated_dp2`` (record-level DP-SGD, C = 1, delta 1e-5);
``--from-llm-log FILE`` prints its DP arms in this JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from confidence import ci95
from federation_split import config, run

from fedshield.config import DPSpec, PrivacySpec
from fedshield.learning.data import silo_examples
from fedshield.privacy import default_sampling_rate, noise_for_dp_sgd

CLIP_NORM, DELTA = 3.0, 1e-5  # C: the median per-record gradient norm at the untrained adapter (above)
EPSILONS = (1.0, 2.0, 4.0, 8.0, None)  # None: no DP


def arm_config(seed: int, rounds: int, epsilon: float | None, unit: str):
    if epsilon is None:
        return config(seed=seed, rounds=rounds)
    dp = DPSpec(enabled=True, unit=unit, clip_norm=CLIP_NORM, target_epsilon=epsilon, delta=DELTA)
    return config(seed=seed, rounds=rounds, privacy=PrivacySpec(pruning=0.5, dp=dp))


def dp_parameters(cfg, epsilon: float) -> dict:
    """The sampling rate and sigma the first silo uses (every silo solves its own from its record count)."""
    records = len(silo_examples(cfg, cfg.silo_names[0])[0])
    rate = default_sampling_rate(cfg.training.batch_size, records)
    steps = cfg.rounds * cfg.training.local_steps
    return {"sampling_rate": round(rate, 4), "steps": steps, "noise_multiplier": round(noise_for_dp_sgd(epsilon, rate, steps, DELTA), 4)}



def time_steps(load, lora, training, batch: list, steps: int, seed: int, workload=None) -> dict:
    """Wall time of one local step, plain and under DP-SGD (q = 1: every record of ``batch``, one micro-batch), of the
    model ``load()`` returns with ``lora``: seconds per step (the mean over ``steps`` after one warm-up step)."""
    import torch

    from fedshield.learning.dp_sgd import DpSgd
    from fedshield.learning.model import with_lora
    from fedshield.learning.training import create_engine, train_local_dp, train_local_stats

    out: dict = {}
    for name in ("plain", "dp_sgd"):
        base, tokenizer = load()
        model = with_lora(base, lora.r, lora.alpha, 0.0, lora.target_modules, seed=seed)
        engine = create_engine(model, training, dp=name == "dp_sgd")
        dp = DpSgd(CLIP_NORM, 1.0, 1.0) if name == "dp_sgd" else None
        seconds = []
        for n in (1, steps):  # the first: a warm-up step (first-step allocations), not counted
            start = time.perf_counter()
            if dp is None:
                train_local_stats(engine, tokenizer, batch, n, len(batch), seed, workload=workload)
            else:
                train_local_dp(engine, tokenizer, batch, n, dp, seed, torch.Generator().manual_seed(0), micro_batch=len(batch),
                               workload=workload)
            seconds.append((time.perf_counter() - start) / n)
        out[name] = round(seconds[-1], 4)
    out["ratio"] = round(out["dp_sgd"] / out["plain"], 2)
    out["batch"] = len(batch)
    out["threads"] = __import__("torch").get_num_threads()
    return out


def step_seconds(seed: int = 0, steps: int = 4) -> dict:
    """``time_steps`` on the benchmark's tiny model and a batch of its first silo's records."""
    import tempfile

    from fedshield.learning.data import public_corpus
    from fedshield.learning.model import build_tiny_base, load_base

    cfg = config(seed=seed)
    train, _ = silo_examples(cfg, cfg.silo_names[0])
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = build_tiny_base(Path(tmp) / "tiny", public_corpus(cfg), seed=seed)
        return time_steps(lambda: load_base(base_dir), cfg.lora, cfg.training, train[: cfg.training.batch_size], steps, seed)


def llm_step_seconds(seed: int = 0, steps: int = 3, batch: int = 16) -> dict:
    """``time_steps`` on SmolLM2 with llm_workloads.py's LoRA, on ``batch`` triage records of the first silo (16: the
    DP arms' expected batch, q * N = 0.133 * 120)."""
    import llm_workloads as llm

    from fedshield.config import LoraSpec, TrainingSpec
    from fedshield.learning.model import load_base

    settings = llm.DEFAULTS
    records = next(iter(llm.task_splits("instruction", seed, settings["train"], settings["val"]).values())).train[:batch]
    model_dir = llm.default_model(Path.home() / ".cache" / "fedshield" / "models")
    training = TrainingSpec(learning_rate=settings["learning_rate"], batch_size=batch, local_steps=steps)
    return time_steps(lambda: load_base(model_dir), LoraSpec(target_modules=llm.TARGET_MODULES), training, records, steps, seed,
                      workload=llm.task_workload("instruction", seed))


def gain_kept(arms: list[dict], zero: list[float]) -> tuple[float | None, float | None, float | None]:
    """(non-private metric, zero-shot metric, share of the non-private gain over zero-shot kept at epsilon 8)."""
    non_private = next((a["metric"] for a in arms if a["epsilon"] is None), None)
    at_8 = next((a["metric"] for a in arms if a["epsilon"] == 8.0), None)
    zero_shot = round(float(np.mean(zero)), 4) if zero else None
    kept = None
    if non_private is not None and at_8 is not None and zero_shot is not None and non_private != zero_shot:
        kept = round((at_8 - zero_shot) / (non_private - zero_shot), 3)
    return non_private, zero_shot, kept


def summarise(rows: list[dict], unit: str, step: dict | None) -> dict:
    by_eps: dict = {}
    for r in rows:
        by_eps.setdefault(r["epsilon"], []).append(r)
    arms = []
    for eps in sorted(by_eps, key=lambda e: float("inf") if e is None else e):
        rs = by_eps[eps]
        finals = [r["mean_auc"] for r in rs]
        arms.append({"epsilon": eps, **{k: rs[0].get(k) for k in ("noise_multiplier", "sampling_rate", "steps")},
                     "metric": round(float(np.mean(finals)), 4), "ci95": ci95(finals),
                     "per_seed": {str(r["seed"]): r["mean_auc"] for r in rs}})
    zero = [r["start_mean_auc"] for r in rows if r.get("start_mean_auc") is not None]  # the same untrained adapter in every arm
    non_private, zero_shot, kept = gain_kept(arms, zero)
    return {"unit": unit, "delta": DELTA, "clip_norm": CLIP_NORM, "seeds": sorted({r["seed"] for r in rows}), "arms": arms,
            "metric": "mean AUC over silos after the last round", "non_private": non_private,
            "zero_shot": zero_shot, "zero_shot_note": "mean AUC over silos of the untrained adapter (the global model round 0 "
            "starts from, before any local training), over every arm and seed", "gain_kept_at_8": kept, "target_gain_kept_at_8": 0.9,
            "step_seconds": step}


def instruction_report(records: list[dict], step: dict | None = None) -> dict:
    """The same JSON for the real-LLM instruction task, from ``benchmarks/llm_workloads.py``'s log (SmolLM2, the triage
    task, exact match): its ``federated`` arm is the non-private one, ``federated_dp8``/``federated_dp2`` the DP arms."""
    from llm_workloads import DP_ARMS, DP_CLIP_NORM, DP_DELTA

    rows = [r for r in records if r["task"] == "instruction"]
    dp_seeds = {r["seed"] for r in rows if r["arm"] in DP_ARMS}
    rows = [r for r in rows if r["seed"] in dp_seeds] if dp_seeds else rows  # every arm on the seeds DP ran

    def finals(arm: str) -> dict[int, float]:
        return {r["seed"]: r["mean"] for r in rows if r["arm"] == arm}

    arms = []
    for arm, eps in [*((a, DP_ARMS[a]) for a in sorted(DP_ARMS, key=DP_ARMS.__getitem__)), ("federated", None)]:
        runs = [r for r in rows if r["arm"] == arm]
        if not runs:
            continue
        values = list(finals(arm).values())
        first = runs[0]
        arms.append({"epsilon": eps, "noise_multiplier": first.get("noise_multiplier"), "sampling_rate": first.get("sampling_rate"),
                     "steps": first.get("dp_steps"), "metric": round(float(np.mean(values)), 4), "ci95": ci95(values),
                     "per_seed": {str(k): round(v, 4) for k, v in sorted(finals(arm).items())}})
    zero = list(finals("zero_shot").values())
    non_private, zero_shot, kept = gain_kept(arms, zero)
    model = next((r["model"] for r in rows if r.get("model")), None)

    def seconds(arm: str) -> float | None:
        walls = [r["wall_s"] for r in rows if r["arm"] == arm and r.get("wall_s")]
        return round(float(np.mean(walls)), 1) if walls else None

    plain, private = seconds("federated"), seconds("federated_dp8")
    return {"unit": "record", "delta": DP_DELTA, "clip_norm": DP_CLIP_NORM, "task": "instruction", "model": model,
            "seeds": sorted({r["seed"] for r in rows if r["arm"] in DP_ARMS}), "arms": arms,
            "metric": "mean exact match over silos after the last round", "non_private": non_private, "zero_shot": zero_shot,
            "gain_kept_at_8": kept, "target_gain_kept_at_8": 0.9,
            "run_seconds": {"plain": plain, "dp_sgd": private, "ratio": round(private / plain, 2) if plain and private else None,
                            "what": "mean wall time of a whole federated run (the same rounds and steps, evaluation "
                                    "included) on a shared 2-core CPU, not a per-step timing"},
            "step_seconds": step}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--unit", choices=("record", "user", "silo"), default="record")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--log")
    parser.add_argument("--from-log")
    parser.add_argument("--from-llm-log", help="summarise the instruction task's DP arms from benchmarks/llm_workloads.py's log")
    parser.add_argument("--time-steps", action="store_true", help="with --from-llm-log: also time plain and DP-SGD steps on SmolLM2")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.from_llm_log:
        from llm_workloads import read_log

        step = llm_step_seconds() if args.time_steps else None
        print(json.dumps(instruction_report(read_log(args.from_llm_log), step)))
        return 0
    if args.from_log:
        rows = [json.loads(line) for line in Path(args.from_log).read_text().splitlines() if line.strip()]
        print(json.dumps(summarise(rows, args.unit, None)))
        return 0
    seeds, rounds, epsilons = (1, 2, (8.0, None)) if args.quick else (args.seeds, args.rounds, EPSILONS)
    done = set()
    rows: list[dict] = []
    if args.log and Path(args.log).exists():
        rows = [r for r in (json.loads(line) for line in Path(args.log).read_text().splitlines() if line.strip())
                if (r.get("clip_norm"), r.get("rounds")) == (CLIP_NORM, rounds)]  # another setting's rows are not this run's
        done = {(r["epsilon"], r["seed"]) for r in rows}
    for seed in range(seeds):
        for eps in epsilons:
            if (eps, seed) in done:
                continue
            cfg = arm_config(seed, rounds, eps, args.unit)
            row = {"epsilon": eps, "seed": seed, "clip_norm": CLIP_NORM, "rounds": rounds} | run(cfg)
            if eps is not None and args.unit != "silo":
                row |= dp_parameters(cfg, eps)
            rows.append(row)
            if args.log:
                with open(args.log, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
    print(json.dumps(summarise(rows, args.unit, step_seconds())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
