"""Federated unlearning: E2URec against NegGrad and Retrain on the synthetic recommendation federation.

Setting: 3 silos (synthetic, non-IID), a federated run of the local federation
(``fedshield.local.demo.run_local``, CKKS and pruning on); each user's last 2 interactions are
held out as the test set (never trained on). Then silo-a forgets 20% of its users: D_f is
every training record of those users at silo-a, D_r the rest of silo-a's training records.

- retrain: the same federated run, from the same base model, without those users' data;
- neggrad: gradient ascent on D_f (a new LoRA, the silo's DeepSpeed engine, E2URec's student step count);
- e2urec: ``fedshield.unlearning.unlearn``.
Each unlearned adapter is folded back into the federation's layout and scored as deployed.

Prints one JSON object to stdout; writes it to benchmarks/results/unlearning.json (full
mode only). ``--quick``: 2 short rounds, few steps (a smoke test; numbers mean little).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed announces its accelerator on stdout at import
    import deepspeed  # noqa: F401

from fedshield.config import AggregationSpec, FederationConfig, ModelSpec, PrivacySpec, SiloSpec, TrainingSpec
from fedshield.learning.data import silo_examples
from fedshield.learning.model import build_tiny_base
from fedshield.updates import VectorLayout
from fedshield.local.retrain import run_federation
from fedshield.unlearning import UnlearningSpec, forget_split, jensen_shannon, neg_grad, score_adapter, unlearn
from fedshield.workloads.recommendation import Example, Interaction, build_examples, catalog, prompt_for, synthetic_silos

SILOS = ("silo-a", "silo-b", "silo-c")
FORGETTER = "silo-a"
FORGET_FRACTION = 0.2
USERS = (150, 100, 70)  # larger than the demo's (52, 36, 26): a test set of 640 records instead of 228
TEST_PER_USER = 2
RESULT = Path(__file__).parent / "results" / "unlearning.json"


def temporal_holdout(interactions: list[Interaction], last: int) -> tuple[list[Interaction], list[Example]]:
    """Each user's ``last`` interactions become test examples (prompted with the history before them); the rest stay."""
    by_user: dict[str, list[Interaction]] = defaultdict(list)
    for it in interactions:
        by_user[it.user].append(it)
    kept, test = [], []
    for user in sorted(by_user):
        seq = sorted(by_user[user], key=lambda it: (it.time, it.item))
        kept += seq[:-last]
        test += build_examples(seq)[-last:]  # one example per interaction after the first, in time order
    return kept, test


def settings(quick: bool, seed: int) -> tuple[FederationConfig, UnlearningSpec]:
    config = FederationConfig(
        name="unlearning-bench", rounds=2 if quick else 5, seed=seed, silos=tuple(SiloSpec(name=s) for s in SILOS),
        training=TrainingSpec(local_steps=5 if quick else 30, batch_size=16), aggregation=AggregationSpec(min_silos=len(SILOS)),
        privacy=PrivacySpec(pruning=0.5),
    )
    spec = UnlearningSpec(steps=6, augment_steps=4, seed=seed) if quick else UnlearningSpec(seed=seed)
    return config, spec


def method_row(scores: dict, reference: dict | None, seconds: float, cpu_seconds: float) -> dict:
    row = {"test_auc": round(scores["test_auc"], 4), "forget_auc": round(scores["forget_auc"], 4)}
    if reference is not None:
        row["jsd_to_retrain"] = round(jensen_shannon(scores["forget_yes"], reference["forget_yes"]), 5)
    row["mean_p_yes_on_forget"] = round(float(scores["forget_yes"].mean()), 4)
    return row | {"seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2)}


def main(quick: bool, seed: int, work: Path) -> dict:
    config, spec = settings(quick, seed)
    data, test = {}, []
    for silo, records in synthetic_silos(SILOS, seed=seed, users=USERS[: len(SILOS)] if not quick else None).items():
        data[silo], held_out = temporal_holdout(records, TEST_PER_USER)
        test += held_out
    base = build_tiny_base(work / "base", catalog(seed=seed) + [prompt_for(["x"], ["y"], "z")], seed=seed)
    config = config.model_copy(update={"model": ModelSpec(path=str(base))})

    original = run_federation(config, data, work / "original")
    train, _ = silo_examples(original.config, FORGETTER)  # exactly what the silo trained on
    split = forget_split(train, fraction=FORGET_FRACTION, seed=seed)
    adapter = original.adapters[FORGETTER]
    layout = VectorLayout.from_tensors(adapter, config.privacy.private_modules)
    common = dict(base_path=base, lora=config.lora, adapter=adapter, layout=layout, spec=spec, training=config.training)

    e2urec = unlearn(forget=split.forget, retain=split.retain, **common)
    neggrad = neg_grad(forget=split.forget, **common)
    retrain = run_federation(config, data, work / "retrain", exclude_users=split.users)

    forgotten = set(split.users)
    test = [e for e in test if e.user not in forgotten]
    score = lambda adapter_tensors: score_adapter(base, config.lora, adapter_tensors, test, split.forget)  # noqa: E731
    s_retrain = score(retrain.adapters[FORGETTER])
    s_original = score(adapter)
    s_e2urec = score(e2urec.adapter.tensors(layout))
    s_neggrad = score(neggrad.adapter.tensors(layout))

    out = {
        "retrain": method_row(s_retrain, None, retrain.seconds, retrain.cpu_seconds),
        "neggrad": method_row(s_neggrad, s_retrain, neggrad.seconds, neggrad.stats["cpu_seconds"]),
        "e2urec": method_row(s_e2urec, s_retrain, e2urec.seconds, e2urec.stats["cpu_seconds"]),
        "original": method_row(s_original, s_retrain, original.seconds, original.cpu_seconds)
        | {"note": "the federated model before unlearning (reference); seconds: its federated run"},
    }
    out["e2urec"] |= {"fold_error_max": round(e2urec.stats["fold_error_max"], 5), "forget_only_steps": e2urec.stats["forget_only_steps"]}
    out["neggrad"] |= {"fold_error_max": round(neggrad.stats["fold_error_max"], 5), "final_forget_ce": round(neggrad.losses[-1], 4)}
    e, n, r = out["e2urec"], out["neggrad"], out["retrain"]
    out["met"] = {
        "jsd_below_neggrad": e["jsd_to_retrain"] < n["jsd_to_retrain"],
        "test_auc_within_0.01_of_retrain": abs(e["test_auc"] - r["test_auc"]) <= 0.01,
        "time_at_most_20pct_of_retrain": e["seconds"] <= 0.2 * r["seconds"],
    }
    out["ratios"] = {"e2urec_over_retrain_seconds": round(e["seconds"] / r["seconds"], 4),
                     "e2urec_over_retrain_cpu_seconds": round(e["cpu_seconds"] / r["cpu_seconds"], 4)}
    out["targets"] = {"jsd_to_retrain": "e2urec < neggrad", "test_auc": "|e2urec - retrain| <= 0.01", "seconds": "e2urec <= 0.2 * retrain"}
    out["context"] = {
        "quick": quick, "seed": seed, "silos": list(SILOS), "forgetting_silo": FORGETTER, "forget_fraction": FORGET_FRACTION,
        "users_per_silo": {s: len({it.user for it in data[s]}) for s in SILOS}, "forgotten_users": len(split.users),
        "forget_users_sha256": split.users_digest, "forget_records": len(split.forget), "retain_records": len(split.retain),
        "test_records": len(test), "rounds": config.rounds, "local_steps": config.training.local_steps,
        "pruning": config.privacy.pruning, "lora_r": config.lora.r, "unlearning": spec.model_dump(mode="json"),
        "jsd": "mean over D_f of JSD between Bernoulli(P(yes)) of the method and of retrain, nats (max ln 2)",
        "seconds": "wall time; retrain: the whole local federation run (processes, training, CKKS); e2urec/neggrad: "
                   "in-process, from loading the current model to the folded adapter. cpu_seconds: user+system CPU time "
                   "of those processes (less sensitive to other load on a shared machine)",
        "cpu_count": os.cpu_count(),
    }
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2 short rounds, few unlearning steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep the runs' files here (default: a temporary directory)")
    args = parser.parse_args()
    stdout = os.dup(1)
    os.dup2(2, 1)  # everything but the JSON goes to stderr, including prints from native code
    try:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = main(args.quick, args.seed, Path(args.workdir or tmp))
        result["context"]["benchmark_s"] = round(time.perf_counter() - start, 1)
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
    text = json.dumps(result)
    print(text)
    if not args.quick:
        RESULT.write_text(text + "\n")
    sys.exit(0)
