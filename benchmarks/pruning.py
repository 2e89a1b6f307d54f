"""What pruning and packing cost in accuracy: plaintext FedAvg against encrypted, pruned, packed arms.

Every arm runs the same in-process federation (``fedshield.local.simulation``: three silos of the
demo's synthetic non-IID split, real PEFT LoRA models trained by real DeepSpeed engines,
real CKKS encryption, homomorphic sum and decryption, the silo agent's mask, error feedback
and packing code) for the same seeds and rounds; only the update path differs:

- plain_fedavg: no encryption, no pruning, no quantisation (a reference, never a default);
- encrypted p=0, 0.5, 0.9, 0.99 with 2 digits per slot (nearest rounding);
- encrypted p=0.9 with 3 and 4 digits per slot (stochastic rounding, error feedback).

Prints one JSON object. mean_auc: the last round's mean validation AUC over silos, averaged
over seeds, with a t-interval over seeds. rounds_to_plain_final: rounds until the seed-mean
AUC first comes within 0.01 of plain FedAvg's final one. bytes_per_kept_param: measured
upload bytes over kept values (the tiny adapter's masks fill a fraction of one ciphertext,
so this includes padding); bytes_per_kept_param_full: bytes per value of a full ciphertext,
what a real-size adapter pays (benchmarks/he_updates.py measures that directly).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed announces its accelerator on stdout at import
    import deepspeed  # noqa: F401

from fedshield.config import DataSpec, FederationConfig, PrivacySpec
from fedshield.crypto import CkksParams, PackingParams
from fedshield.local.simulation import InProcessFederation

ARMS = (
    {"name": "plain_fedavg", "pruning": 0.0, "digits_per_slot": None, "encrypted": False},
    {"name": "encrypted_dense", "pruning": 0.0, "digits_per_slot": 2, "encrypted": True},
    {"name": "p0.5", "pruning": 0.5, "digits_per_slot": 2, "encrypted": True},
    {"name": "p0.9", "pruning": 0.9, "digits_per_slot": 2, "encrypted": True},
    {"name": "p0.99", "pruning": 0.99, "digits_per_slot": 2, "encrypted": True},
    {"name": "p0.9_3digits", "pruning": 0.9, "digits_per_slot": 3, "encrypted": True},
    {"name": "p0.9_4digits", "pruning": 0.9, "digits_per_slot": 4, "encrypted": True},
)
TOLERANCE = 0.01
COMPACT_CIPHERTEXT_BYTES = 2 * 8192 * 60 // 8  # two polynomials of 60-bit coefficients (docs/crypto.md)


def arm_config(arm: dict, seed: int, rounds: int, local_steps: int, explore_share: float | None = None) -> FederationConfig:
    digits = arm["digits_per_slot"] or 2
    packing = PackingParams(digits_per_slot=digits, rounding="nearest" if digits == 2 else "stochastic")
    privacy = PrivacySpec(pruning=arm["pruning"], packing=packing)
    if explore_share is not None:
        privacy = privacy.model_copy(update={"explore_share": explore_share})
    cfg = FederationConfig(name="pruning-bench", rounds=rounds, seed=seed, data=DataSpec(seed=seed), privacy=privacy)
    return cfg.model_copy(update={"training": cfg.training.model_copy(update={"local_steps": local_steps})})


def run_arm(arm: dict, seed: int, rounds: int, local_steps: int, explore_share: float | None = None) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        config = arm_config(arm, seed, rounds, local_steps, explore_share)
        federation = InProcessFederation(config, Path(workdir), encrypted=arm["encrypted"])
        history = federation.run(rounds)
        size = federation.layout.size
    uploads = [np.mean(list(r.upload_bytes.values())) for r in history]
    return {"curve": [r.mean_score for r in history], "coverage": history[-1].coverage,
            "upload_bytes_per_round": float(np.mean(uploads)), "kept": history[-1].kept, "size": size}


def ci95(values: list[float]) -> list[float]:
    mean = float(np.mean(values))
    if len(values) < 2:
        return [round(mean, 4), round(mean, 4)]
    half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return [round(mean - half, 4), round(mean + half, 4)]


def summarise(arm: dict, runs: list[dict], plain_final: float | None, plain_runs: list[dict] | None) -> dict:
    finals = [r["curve"][-1] for r in runs]
    last3 = [float(np.mean(r["curve"][-3:])) for r in runs]
    curve = np.mean([r["curve"] for r in runs], axis=0)
    reach = None
    if plain_final is not None:
        hits = np.flatnonzero(curve >= plain_final - TOLERANCE)
        reach = int(hits[0]) + 1 if hits.size else None
    digits = arm["digits_per_slot"]
    kept = runs[0]["kept"]
    out = {
        "name": arm["name"], "pruning": arm["pruning"], "digits_per_slot": digits, "encrypted": arm["encrypted"],
        "mean_auc": round(float(np.mean(finals)), 4), "mean_auc_ci95": ci95(finals),
        "mean_auc_last3": round(float(np.mean(last3)), 4), "mean_auc_last3_ci95": ci95(last3),
        "mean_auc_by_round": [round(float(x), 4) for x in curve],
        "rounds_to_plain_final": reach,
        "upload_bytes_per_round": round(float(np.mean([r["upload_bytes_per_round"] for r in runs]))),
        "bytes_per_kept_param": round(float(np.mean([r["upload_bytes_per_round"] for r in runs])) / kept, 3) if arm["encrypted"] else None,
        "bytes_per_kept_param_full": round(COMPACT_CIPHERTEXT_BYTES / (CkksParams().slots * digits), 3) if digits else None,
        "coverage_after_rounds": round(float(np.mean([r["coverage"] for r in runs])), 4),
        "kept_per_round": kept,
    }
    if plain_runs is not None:
        diffs = [r["curve"][-1] - p["curve"][-1] for r, p in zip(runs, plain_runs, strict=True)]
        out["auc_minus_plain_ci95"] = ci95(diffs)
        diffs3 = [np.mean(r["curve"][-3:]) - np.mean(p["curve"][-3:]) for r, p in zip(runs, plain_runs, strict=True)]
        out["auc_last3_minus_plain_ci95"] = ci95([float(d) for d in diffs3])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--log", help="append each finished run (arm, seed) as a JSON line to this file")
    parser.add_argument("--from-log", help="summarise the runs of an earlier --log file instead of running")
    parser.add_argument("--explore-share", type=float, help="override privacy.explore_share (an ablation)")
    parser.add_argument("--arms", nargs="+", default=[a["name"] for a in ARMS])
    parser.add_argument("--quick", action="store_true", help="2 rounds, 1 seed, 3 local steps (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.rounds, args.local_steps = [0], 2, 3
    start = time.perf_counter()
    arms = [a for a in ARMS if a["name"] in args.arms]
    runs: dict[str, list[dict]] = {a["name"]: [] for a in arms}
    if args.from_log:
        with open(args.from_log, encoding="utf-8") as fh:
            logged = [json.loads(line) for line in fh if line.strip()]
        args.seeds = sorted({r["seed"] for r in logged})
        args.rounds = len(logged[0]["curve"])
        for r in sorted(logged, key=lambda r: r["seed"]):
            if r["arm"] in runs:
                runs[r["arm"]].append(r)
        arms = [a for a in arms if runs[a["name"]]]
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's op build also prints on stdout
        for seed in [] if args.from_log else args.seeds:  # seeds outermost: a cut-short run still has every arm
            for arm in arms:
                runs[arm["name"]].append(run_arm(arm, seed, args.rounds, args.local_steps, args.explore_share))
                line = json.dumps({"arm": arm["name"], "seed": seed, **runs[arm["name"]][-1]})
                print(line, file=sys.stderr, flush=True)
                if args.log:
                    with open(args.log, "a", encoding="utf-8") as fh:
                        fh.write(line + "\n")
    plain = runs.get("plain_fedavg")
    plain_final = float(np.mean([r["curve"][-1] for r in plain])) if plain else None
    results = [summarise(a, runs[a["name"]], plain_final, plain) for a in arms]
    by_name = {r["name"]: r for r in results}
    p9 = by_name.get("p0.9")
    plain_row = by_name.get("plain_fedavg")
    met = None
    if p9 and plain_row:
        accurate = [r for r in results if r["encrypted"] and r["pruning"] == 0.9 and abs(r["mean_auc"] - plain_final) <= TOLERANCE
                    and r["rounds_to_plain_final"] is not None and plain_row["rounds_to_plain_final"] is not None
                    and r["rounds_to_plain_final"] <= 1.1 * plain_row["rounds_to_plain_final"]]
        met = {
            "p0.9_within_0.01_of_plain": abs(p9["mean_auc"] - plain_final) <= TOLERANCE,
            "p0.9_rounds_at_most_1.1x_plain": (p9["rounds_to_plain_final"] is not None and plain_row["rounds_to_plain_final"] is not None
                                                and p9["rounds_to_plain_final"] <= 1.1 * plain_row["rounds_to_plain_final"]),
            "coverage_1_for_every_arm": all(r["coverage_after_rounds"] == 1.0 for r in results),
            "best_accurate_arm_at_most_8_bytes": min((r["bytes_per_kept_param_full"] for r in accurate), default=None) is not None
                                                  and min(r["bytes_per_kept_param_full"] for r in accurate) <= 8,
            "best_arm_within_0.01_auc_at_most_8_bytes": min(
                (r["bytes_per_kept_param_full"] for r in results if r["encrypted"] and abs(r["mean_auc"] - plain_final) <= TOLERANCE),
                default=99.0) <= 8,
        }
    report = {
        "seeds": args.seeds, "rounds": args.rounds, "local_steps": args.local_steps, "silos": 3,
        "explore_share": args.explore_share if args.explore_share is not None else PrivacySpec().explore_share,
        "shared_params": runs[arms[0]["name"]][0]["size"],
        "plain_fedavg_mean_auc": round(plain_final, 4) if plain_final is not None else None,
        "arms": results, "met": met,
        "targets": {"p0.9": "mean AUC within 0.01 of plain FedAvg, reaching it in <= 1.1x its rounds",
                    "coverage": "1.0 for every arm by the last round",
                    "bytes": "<= 8 bytes per kept parameter for the best arm meeting the accuracy target"},
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
