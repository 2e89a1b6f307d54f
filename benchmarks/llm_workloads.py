"""A pretrained LLM (SmolLM2-135M-Instruct) on two workloads: zero-shot, local-only, federated, centralised.

Tasks (three silos each, non-IID):

- instruction: the synthetic triage task (``workloads.triage``), one silo per domain (emergency,
  general practice, children's clinic: own vocabulary, own department mix); exact match of the
  greedy reply with the department;
- recommendation: the synthetic TALLRec-style yes/no split (``workloads.recommendation.synthetic_silos``); AUC.

Arms, for the same seeds, LoRA (r=8 on q, k, v, o) and optimiser settings:

- zero_shot: the base model (its LoRA adapter starts at zero), no training;
- local_only: each silo alone, ``rounds * local_steps`` steps on its own data;
- federated: ``InProcessFederation`` (the silo agent's update path: DeepSpeed engines, CKKS
  encryption and homomorphic sum, pruning 0.5, FedAvg weights), ``rounds`` rounds of ``local_steps``;
- centralised: all silos' training data pooled, ``silos * rounds * local_steps`` steps (the
  federation's total number of steps).

Every arm is scored on each silo's own validation set; an arm's score is the mean over silos,
averaged over the seeds every arm of the task finished, with a t-interval over seeds (ci95). Targets per task: federated >= local-only,
federated within 0.02 of centralised, zero-shot below federated by more than 0.02.

Prints one JSON object. Each finished (task, arm, seed) is a JSON line in ``--log``; a rerun with
the same ``--log`` skips what it holds (a killed run resumes), and ``--from-log`` only summarises.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import random
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from confidence import ci95

with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed announces its accelerator on stdout at import
    import deepspeed  # noqa: F401
import torch

from fedshield.config import DataSpec, DPSpec, FederationConfig, LoraSpec, ModelSpec, PrivacySpec, SiloSpec, TrainingSpec
from fedshield.learning.model import load_base, with_lora
from fedshield.learning.training import create_engine, train_local_stats
from fedshield.learning.workloads import get_workload
from fedshield.local.simulation import InProcessFederation
from fedshield.workloads import triage
from fedshield.workloads.base import Split, Workload
from fedshield.workloads.recommendation import build_examples, split_examples, synthetic_silos

TASKS = ("instruction", "recommendation")
ARMS = ("zero_shot", "local_only", "federated", "centralised")
DP_ARMS = {"federated_dp8": 8.0, "federated_dp4": 4.0, "federated_dp2": 2.0, "federated_dp1": 1.0}  # federated with record-level DP-SGD at this epsilon (on request)
DP_CLIP_NORM, DP_DELTA = 1.0, 1e-5  # C: the spec's default, chosen before any run (no gradient norms measured on SmolLM2)
METRIC = {"instruction": "exact_match", "recommendation": "auc"}
RECOMMENDATION_SILOS = ("shop-a", "shop-b", "shop-c")
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
TOLERANCE = 0.02
DEFAULTS = {"rounds": 4, "local_steps": 6, "batch_size": 4, "learning_rate": 2e-3, "train": 120, "val": 40}
QUICK = {"rounds": 2, "local_steps": 3, "train": 60, "val": 20}


# --- data and configuration ---------------------------------------------------------------

def _sample(examples: list, n: int, seed: int) -> list:
    return examples if len(examples) <= n else random.Random(seed).sample(examples, n)


def task_splits(task: str, seed: int, train: int, val: int) -> dict[str, Split]:
    """Each silo's train and validation examples for ``task`` (deterministic by seed; at most ``train``/``val`` each)."""
    if task == "instruction":
        out = {}
        for domain in triage.DOMAINS:
            rows = triage.examples(domain, train + val, seed)
            out[domain] = Split(rows[:train], rows[train:])
        return out
    silos = synthetic_silos(RECOMMENDATION_SILOS, seed=seed)
    out = {}
    for name, interactions in silos.items():
        tr, va = split_examples(build_examples(interactions), 0.2, seed)
        out[name] = Split(_sample(tr, train, seed), _sample(va, val, seed))
    return out


def task_workload(task: str, seed: int) -> Workload:
    return get_workload(task, seed=seed)


def bench_config(silos: list[str], seed: int, model: str, settings: dict, epsilon: float | None = None) -> FederationConfig:
    """The federation's config: SmolLM2 by path, LoRA on attention, CKKS with pruning 0.5; record-level DP-SGD at
    ``epsilon`` (delta 1e-5, C = 1, the default sampling rate) when given."""
    dp = DPSpec(enabled=epsilon is not None, unit="record", clip_norm=DP_CLIP_NORM, target_epsilon=epsilon, delta=DP_DELTA)
    return FederationConfig(
        name="llm-bench", rounds=settings["rounds"], seed=seed, silos=tuple(SiloSpec(name=s) for s in silos),
        model=ModelSpec(path=str(model)), lora=LoraSpec(target_modules=TARGET_MODULES),
        training=TrainingSpec(learning_rate=settings["learning_rate"], batch_size=settings["batch_size"],
                              local_steps=settings["local_steps"]),
        privacy=PrivacySpec(pruning=0.5, dp=dp), data=DataSpec(seed=seed),
    )


# --- arms ---------------------------------------------------------------------------------

def _fresh(config: FederationConfig):
    base, tokenizer = load_base(config.model.path)
    lora = config.lora
    return with_lora(base, lora.r, lora.alpha, lora.dropout, lora.target_modules, seed=config.seed), tokenizer


def _scores(workload: Workload, model, tokenizer, splits: dict[str, Split]) -> tuple[dict, dict]:
    per_silo, metrics = {}, {}
    for name, split in splits.items():
        evaluation = workload.evaluate(model, tokenizer, split.validation)
        per_silo[name], metrics[name] = evaluation.score, evaluation.metrics
    return per_silo, metrics


def _train_alone(config: FederationConfig, workload: Workload, train: list, steps: int, seed: int):
    model, tokenizer = _fresh(config)
    engine = create_engine(model, config.training)
    train_local_stats(engine, tokenizer, train, steps, config.training.batch_size, seed, workload=workload)
    return model, tokenizer


def run_arm(task: str, arm: str, seed: int, model: str, settings: dict) -> dict:
    """One (task, arm, seed): per-silo headline scores (and all metrics) on each silo's validation set."""
    splits = task_splits(task, seed, settings["train"], settings["val"])
    workload = task_workload(task, seed)
    config = bench_config(list(splits), seed, model, settings, DP_ARMS.get(arm))
    steps = settings["rounds"] * settings["local_steps"]
    start = time.perf_counter()
    if arm == "zero_shot":
        net, tokenizer = _fresh(config)
        per_silo, metrics = _scores(workload, net, tokenizer, splits)
        total_steps = 0
    elif arm == "local_only":
        per_silo, metrics = {}, {}
        for name, split in splits.items():
            net, tokenizer = _train_alone(config, workload, split.train, steps, zlib.crc32(f"{seed}/{name}/local".encode()))
            own = _scores(workload, net, tokenizer, {name: split})
            per_silo.update(own[0]), metrics.update(own[1])
            del net
            gc.collect()
        total_steps = steps * len(splits)
    elif arm == "centralised":
        pooled = [e for split in splits.values() for e in split.train]
        net, tokenizer = _train_alone(config, workload, pooled, steps * len(splits), zlib.crc32(f"{seed}/central".encode()))
        per_silo, metrics = _scores(workload, net, tokenizer, splits)
        total_steps = steps * len(splits)
    elif arm == "federated" or arm in DP_ARMS:
        with tempfile.TemporaryDirectory() as workdir:
            federation = InProcessFederation(config, Path(workdir), encrypted=True, workload=workload, splits=splits)
            rounds = settings["rounds"]
            last = [federation.run_round(r, evaluate=r == rounds - 1) for r in range(rounds)][-1]
        per_silo, metrics = dict(last.scores), dict(last.metrics)
        total_steps = steps * len(splits)
    else:
        raise ValueError(f"unknown arm {arm!r}")
    gc.collect()
    dp = {}
    if arm in DP_ARMS:
        from fedshield.learning.dp_sgd import silo_dp_sgd

        first = next(iter(splits))
        run, _ = silo_dp_sgd(config, first, [e.user for e in splits[first].train]) or (None, None)
        dp = {"epsilon": DP_ARMS[arm], "delta": DP_DELTA, "clip_norm": DP_CLIP_NORM, "noise_multiplier": run and run.noise_multiplier,
              "sampling_rate": run and run.sampling_rate, "dp_steps": steps}
    return {"task": task, "arm": arm, "seed": seed, "metric": METRIC[task], "per_silo": per_silo, **dp,
            "mean": float(np.mean(list(per_silo.values()))), "metrics": metrics, "steps": total_steps,
            "wall_s": round(time.perf_counter() - start, 1)}


# --- summary ------------------------------------------------------------------------------


def targets(means: dict[str, float]) -> dict[str, bool | None]:
    """The issue's targets on the seed-mean scores (None where an arm is missing)."""
    fed, local, central, zero = (means.get(a) for a in ("federated", "local_only", "centralised", "zero_shot"))
    return {
        "federated_ge_local_only": None if fed is None or local is None else fed >= local,
        "federated_within_0.02_of_centralised": None if fed is None or central is None else abs(fed - central) <= TOLERANCE,
        "zero_shot_below_federated": None if fed is None or zero is None else zero < fed - TOLERANCE,
    }


def summarise_task(task: str, records: list[dict]) -> dict:
    """One task's block of the report from its logged (arm, seed) records."""
    out: dict = {"metric": METRIC[task]}
    means, ci, per_silo, seeds = {}, {}, {}, {}
    for arm in (*ARMS, *DP_ARMS):
        runs = sorted((r for r in records if r["arm"] == arm), key=lambda r: r["seed"])
        if not runs:
            continue
        values = [r["mean"] for r in runs]
        means[arm] = round(float(np.mean(values)), 4)
        ci[arm] = ci95(values)
        silos = runs[0]["per_silo"]
        per_silo[arm] = {s: round(float(np.mean([r["per_silo"][s] for r in runs])), 4) for s in silos}
        seeds[arm] = [r["seed"] for r in runs]
    out.update({arm: means.get(arm) for arm in (*ARMS, *(a for a in DP_ARMS if a in means))})
    out.update({"ci95": ci, "per_silo": per_silo, "seeds_per_arm": seeds, "targets": targets(means)})
    return out


def complete_seeds(records: list[dict]) -> list[int]:
    """Seeds for which every (task, arm) that appears in ``records`` is there."""
    pairs = {(r["task"], r["arm"]) for r in records}
    return sorted(s for s in {r["seed"] for r in records} if pairs <= {(r["task"], r["arm"]) for r in records if r["seed"] == s})


def report(records: list[dict], model: str, settings: dict, wall_s: float) -> dict:
    """The one JSON object; each task's arms are compared on the seeds all of them finished (others: partial_seeds)."""
    tasks = {}
    for task in TASKS:
        mine = [r for r in records if r["task"] == task]
        if not mine:
            continue
        seeds = complete_seeds(mine) or sorted({r["seed"] for r in mine})
        tasks[task] = {**summarise_task(task, [r for r in mine if r["seed"] in seeds]), "seeds": seeds,
                       "partial_seeds": sorted({r["seed"] for r in mine} - set(seeds))}
    return {"model": model, "seeds": sorted({s for t in tasks.values() for s in t["seeds"]}), "tasks": tasks,
            "settings": settings, "compute_s": round(sum(r["wall_s"] for r in records), 1), "wall_s": round(wall_s, 1)}


def read_log(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def default_model(cache: Path) -> Path:
    """SmolLM2-135M-Instruct imported from its package (``fedshield models import``) into ``cache``, once."""
    from fedshield.learning.models import import_model

    return import_model("smollm2-135m-instruct", cache / "smollm2-135m-instruct")[0]


def model_name(path: str | Path) -> str:
    """What the report calls the model: the GGUF file it was imported from, else its directory's name."""
    from fedshield.learning.models import imported_source

    source = imported_source(path)
    return Path(source["gguf_file"]).stem if source and source.get("gguf_file") else Path(path).name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a Hugging Face model directory (default: SmolLM2 imported into --cache)")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "fedshield" / "models"))
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (0, 1, ...)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=(*ARMS, *DP_ARMS))
    for key, value in DEFAULTS.items():
        parser.add_argument("--" + key.replace("_", "-"), type=type(value), default=None, help=f"default {value}")
    parser.add_argument("--log", help="append each finished (task, arm, seed) as a JSON line; rerunning skips what it holds")
    parser.add_argument("--from-log", help="summarise an earlier --log file instead of running")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 rounds of 3 steps, 60 train / 20 validation per silo")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 on a shared CPU)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    settings = {**DEFAULTS, **(QUICK if args.quick else {})}
    settings.update({k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None})
    seeds = [0] if args.quick else list(range(args.seeds))
    if args.from_log:
        records = read_log(args.from_log)
        model = args.model or next((r["model"] for r in records if "model" in r), "SmolLM2-135M-Instruct")
        settings = records[0].get("settings", settings) if records else settings
    else:
        torch.set_num_threads(args.threads)
        path = str(args.model or default_model(Path(args.cache)))
        model = model_name(path)
        records = [r for r in read_log(args.log) if r.get("settings") == settings] if args.log else []
        done = {(r["task"], r["arm"], r["seed"]) for r in records}
        with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's op build also prints on stdout
            for seed in seeds:  # seeds outermost: a cut-short run still has every arm of its first seeds
                for task in args.tasks:
                    for arm in args.arms:
                        if (task, arm, seed) in done:
                            continue
                        record = {**run_arm(task, arm, seed, path, settings), "model": model, "settings": settings}
                        records.append(record)
                        line = json.dumps(record)
                        print(line, file=sys.stderr, flush=True)
                        if args.log:
                            with open(args.log, "a", encoding="utf-8") as fh:
                                fh.write(line + "\n")
        records = [r for r in records if r["seed"] in seeds and r["task"] in args.tasks and r["arm"] in args.arms]
    print(json.dumps(report(records, model, settings, time.perf_counter() - start)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
