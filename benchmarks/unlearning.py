"""Federated unlearning measured as E2URec's paper measures it: E2URec against Retrain, NegGrad, Bad-T and the untouched model.

Setting (per seed): 3 silos (synthetic, non-IID); at the forgetting silo a share of users is
never trained on at all (the *unseen* users, for membership inference); every other user's
last 2 interactions are held out as the test set. A federated run of the local federation
(``fedshield.local.demo.run_local``: processes, CKKS, pruning) gives the original model. Then
the forgetting silo forgets 20% of its trained users: D_f is every training record of those
users there, D_r the rest of its training records.

Methods (all LoRA-only, the rank-preserving student, the same step budget):
- retrain: the same federated run without D_f's users; a second retrain with another seed is
  the *noise floor* (how far two equally valid answers lie apart);
- untouched: the original model;
- neggrad: the E2URec authors' NegGrad, ``CE(D_r) - 0.5 CE(D_f)``;
- bad_teacher: Bad-T (an incompetent teacher on D_f, the current model on D_r);
- e2urec: ``fedshield.unlearning.unlearn`` (its default student: the federation's adapter trained further, same rank);
- e2urec_fold: the same with a new LoRA folded into the adapter by truncated SVD (``student="new_lora"``), whose
  ``fold_error_max`` (relative Frobenius norm dropped, worst module) shows what the fold loses.

Metrics: AUC, ACC, LogLoss on D_f, D_r and the test set; distance to Retrain on D_f as the
symmetric KL of the full next-token distributions (the authors' measure), their L2 distance,
the L2 distance of the weight changes, and our Bernoulli JSD; the loss-threshold membership
advantage of D_f against unseen users (forgotten users should look unseen; the untouched
model's advantage shows whether there was anything to forget); trainable parameters and time.

Prints one JSON object (means and 95% t-intervals over seeds, per-seed rows, targets).
``--log`` appends each finished seed as a JSON line; ``--from-log`` summarises a log without
running. ``--model DIR``: a Hugging Face model directory (e.g. from ``fedshield models
import``); default: the tiny demo model. ``--quick``: 2 short rounds (a smoke test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from confidence import ci95

with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed announces its accelerator on stdout at import
    import deepspeed  # noqa: F401

from fedshield.config import AggregationSpec, FederationConfig, ModelSpec, PrivacySpec, SiloSpec, TrainingSpec
from fedshield.learning.data import silo_examples
from fedshield.learning.model import build_tiny_base
from fedshield.local.retrain import run_federation
from fedshield.unlearning import UnlearningSpec, bad_teacher, forget_split, jensen_shannon, neg_grad, unlearn
from fedshield.unlearning.current import current_model
from fedshield.unlearning.evaluate import (
    delta_weight_l2,
    membership_advantage,
    membership_auc,
    next_token_distributions,
    output_l2,
    record_losses,
    symmetric_kl,
    task_metrics,
    user_mean_losses,
    yes_distribution,
)
from fedshield.updates import VectorLayout
from fedshield.workloads.recommendation import Example, Interaction, build_examples, catalog, prompt_for, synthetic_silos

SILOS = ("silo-a", "silo-b", "silo-c")
FORGETTER = "silo-a"
FORGET_FRACTION = 0.2
UNSEEN_FRACTION = 0.15  # of the forgetting silo's users, never trained on by anyone
USERS = (150, 100, 70)
TEST_PER_USER = 2
METHODS = ("untouched", "neggrad", "bad_teacher", "e2urec", "e2urec_fold")
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
        test += build_examples(seq)[-last:]
    return kept, test


def split_data(seed: int, quick: bool, fit_probability: float = 0.9,
               items_per_user: int = 10) -> tuple[dict[str, list[Interaction]], list[Example], list[Example]]:
    """(training interactions per silo, test examples, every example of the unseen users)."""
    data, test, unseen = {}, [], []
    silos = synthetic_silos(SILOS, seed=seed, users=None if quick else USERS, items_per_user=items_per_user,
                            fit_probability=fit_probability)
    for silo, records in silos.items():
        if silo == FORGETTER:
            users = sorted({it.user for it in records})
            hidden = set(random.Random(seed).sample(users, max(2, round(UNSEEN_FRACTION * len(users)))))
            unseen = build_examples([it for it in records if it.user in hidden])
            records = [it for it in records if it.user not in hidden]
        data[silo], held_out = temporal_holdout(records, TEST_PER_USER)
        test += held_out
    return data, test, unseen


def settings(quick: bool, seed: int, model: str, rounds: int | None = None,
             local_steps: int | None = None) -> tuple[FederationConfig, UnlearningSpec]:
    """The federation and unlearning settings (``rounds``/``local_steps`` override 5 and 30, e.g. to make it memorise)."""
    config = FederationConfig(
        name="unlearning-bench", rounds=rounds or (2 if quick else 5), seed=seed, silos=tuple(SiloSpec(name=s) for s in SILOS),
        training=TrainingSpec(local_steps=local_steps or (5 if quick else 30), batch_size=16), aggregation=AggregationSpec(min_silos=len(SILOS)),
        privacy=PrivacySpec(pruning=0.5), model=ModelSpec(path=model),
    )
    spec = UnlearningSpec(steps=6, augment_steps=4, seed=seed) if quick else UnlearningSpec(seed=seed)
    return config, spec


def evaluate(base: str, config: FederationConfig, tensors: dict, sets: dict[str, list[Example]]) -> dict:
    """Yes probabilities on every set and the full next-token distributions on D_f, for one adapter."""
    model, tokenizer = current_model(base, config.lora, tensors)
    out = {name: yes_distribution(model, tokenizer, examples) for name, examples in sets.items()}
    out["forget_dist"] = next_token_distributions(model, tokenizer, sets["forget"])
    return out


def row(ev: dict, ref: dict | None, sets: dict[str, list[Example]], tensors: dict, ref_tensors: dict | None, scale: float) -> dict:
    labels = {name: np.array([e.label for e in examples]) for name, examples in sets.items()}
    out: dict = {name: task_metrics(labels[name], ev[name]) for name in ("forget", "retain", "test")}
    forget_losses = record_losses(labels["forget"], ev["forget"])
    unseen_losses = record_losses(labels["unseen"], ev["unseen"])
    out["membership_advantage"] = membership_advantage(forget_losses, unseen_losses)
    out["membership_auc"] = membership_auc(forget_losses, unseen_losses)
    out["user_membership_auc"] = membership_auc(user_mean_losses(forget_losses, [e.user for e in sets["forget"]]),
                                                user_mean_losses(unseen_losses, [e.user for e in sets["unseen"]]))
    if ref is not None and ref_tensors is not None:
        out["to_retrain"] = {
            "symmetric_kl": symmetric_kl(ev["forget_dist"], ref["forget_dist"]),
            "output_l2": output_l2(ev["forget_dist"], ref["forget_dist"]),
            "weight_l2": delta_weight_l2(tensors, ref_tensors, scale),
            "bernoulli_jsd": jensen_shannon(ev["forget"], ref["forget"]),
        }
    return out


def one_seed(quick: bool, seed: int, model: str | None, work: Path, rounds: int | None = None,
             local_steps: int | None = None, fit_probability: float = 0.9, items_per_user: int = 10) -> dict:
    data, test, unseen = split_data(seed, quick, fit_probability, items_per_user)
    base = model or str(build_tiny_base(work / "base", catalog(seed=seed) + [prompt_for(["x"], ["y"], "z")], seed=seed))
    config, spec = settings(quick, seed, base, rounds, local_steps)
    original = run_federation(config, data, work / "original")
    train, _ = silo_examples(original.config, FORGETTER)  # exactly what the silo trained on
    split = forget_split(train, fraction=FORGET_FRACTION, seed=seed)
    adapter = original.adapters[FORGETTER]
    layout = VectorLayout.from_tensors(adapter, config.privacy.private_modules)
    common = dict(base_path=base, lora=config.lora, adapter=adapter, layout=layout, spec=spec, training=config.training)
    results = {"e2urec": unlearn(forget=split.forget, retain=split.retain, **common),
               "e2urec_fold": unlearn(forget=split.forget, retain=split.retain, student="new_lora", **common),
               "neggrad": neg_grad(forget=split.forget, retain=split.retain, **common),
               "bad_teacher": bad_teacher(forget=split.forget, retain=split.retain, **common)}
    retrain = run_federation(config, data, work / "retrain", exclude_users=split.users)
    floor_config = config.model_copy(update={"seed": seed + 1000})
    retrain2 = run_federation(floor_config, data, work / "retrain2", exclude_users=split.users)

    forgotten = set(split.users)
    sets = {"forget": split.forget, "retain": split.retain, "test": [e for e in test if e.user not in forgotten], "unseen": unseen}
    tensors = {"untouched": adapter, **{m: r.adapter.tensors(layout) for m, r in results.items()}}
    ref_tensors = retrain.adapters[FORGETTER]
    ref = evaluate(base, config, ref_tensors, sets)
    scale = config.lora.alpha / config.lora.r
    out: dict = {"seed": seed, "methods": {}}
    out["methods"]["retrain"] = row(ref, None, sets, ref_tensors, None, scale) | {"seconds": retrain.seconds}
    floor_tensors = retrain2.adapters[FORGETTER]
    out["noise_floor"] = row(evaluate(base, config, floor_tensors, sets), ref, sets, floor_tensors, ref_tensors, scale)
    for method in METHODS:
        result = results.get(method)
        out["methods"][method] = row(evaluate(base, config, tensors[method], sets), ref, sets, tensors[method], ref_tensors, scale) | (
            {"seconds": result.seconds, "trainable_parameters": result.stats["trainable_parameters"],
             "fold_error_max": result.stats["fold_error_max"]} if result else {})
    out["context"] = {"forgotten_users": len(split.users), "forget_records": len(split.forget), "retain_records": len(split.retain),
                      "test_records": len(sets["test"]), "unseen_records": len(unseen), "rounds": config.rounds,
                      "local_steps": config.training.local_steps, "lora_r": config.lora.r,
                      "fit_probability": fit_probability, "items_per_user": items_per_user,
                      "student": results["e2urec"].stats["student"],
                      "model": model or "tiny (random-initialised demo model)"}
    return out


def flatten(d: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= flatten(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out



def paired(rows: list[dict], arm: str, reference: str, metric: str) -> dict:
    """Per seed ``arm``'s ``metric`` minus ``reference``'s, with the mean and 95% t-interval of the differences."""
    diffs = [r["methods"][arm][metric] - r["methods"][reference][metric] for r in rows
             if metric in r["methods"][arm] and metric in r["methods"][reference]]
    return {"mean": round(float(np.mean(diffs)), 5), "ci95": [round(x, 5) for x in ci95(diffs, digits=None)],
            "per_seed": [round(d, 5) for d in diffs]}


def summarise(rows: list[dict]) -> dict:
    """Means and 95% t-intervals over seeds of every number, the targets, and the per-seed rows."""
    summary: dict = {}
    for arm in ("noise_floor", "retrain", *METHODS):
        per_seed = [flatten(r["noise_floor"] if arm == "noise_floor" else r["methods"][arm]) for r in rows
                    if arm == "noise_floor" or arm in r["methods"]]  # rows logged before an arm existed lack it
        if not per_seed:
            continue
        names = sorted(set().union(*per_seed))
        summary[arm] = {
            n: {"mean": round(float(np.mean([p[n] for p in per_seed if n in p])), 5),
                "ci95": [round(x, 5) for x in ci95([p[n] for p in per_seed if n in p], digits=None)]} for n in names}
    e, floor = summary["e2urec"], summary["noise_floor"]

    def mean(arm: str, name: str) -> float:
        return summary[arm][name]["mean"]

    skl = "to_retrain.symmetric_kl"
    attack = next((a for a in ("user_membership_auc", "membership_auc") if a in summary["untouched"]), None)
    memorisation = {a: paired(rows, "untouched", "retrain", a) for a in ("membership_auc", "user_membership_auc")
                    if a in summary["untouched"]}
    test_aucs = [r["methods"]["e2urec"]["test"]["auc"] for r in rows]
    spread = [min(r["methods"]["retrain"]["test"]["auc"], r["noise_floor"]["test"]["auc"]) for r in rows], \
             [max(r["methods"]["retrain"]["test"]["auc"], r["noise_floor"]["test"]["auc"]) for r in rows]
    targets = {
        "e2urec_closer_to_retrain_than_untouched": mean("e2urec", skl) < mean("untouched", skl),
        "e2urec_closer_than_neggrad": mean("e2urec", skl) < mean("neggrad", skl),
        "e2urec_closer_than_bad_teacher": mean("e2urec", skl) < mean("bad_teacher", skl),
        "beyond_noise_floor": e[skl]["ci95"][1] < summary["untouched"][skl]["ci95"][0] and mean("untouched", skl) > floor[skl]["ci95"][1],
        "test_auc_within_retrain_spread": bool(np.all([lo - 1e-9 <= a <= hi + 1e-9 for a, lo, hi in zip(test_aucs, *spread, strict=False)])),
        "membership_advantage_at_most_unseen_plus_0.02": mean("e2urec", "membership_advantage") <= mean("retrain", "membership_advantage") + 0.02,
        "time_at_most_20pct_of_retrain": mean("e2urec", "seconds") <= 0.2 * mean("retrain", "seconds"),
        "untouched_model_memorises_forget_users": None if attack is None else  # rows from before the AUC attack: None
        memorisation[attack]["ci95"][0] > 0,
        "membership_auc_at_most_unseen_plus_0.02": None if attack is None else
        mean("e2urec", attack) <= mean("retrain", attack) + 0.02,
    }
    return {"seeds": [r["seed"] for r in rows], "summary": summary, "targets": targets, "memorisation": memorisation,
            "attack": attack,
            "notes": {"membership_advantage": "max over thresholds of TPR - FPR, D_f vs never-seen users' records; "
                                              "retrain's value is the level of users it never saw",
                      "membership_auc": "the same loss attack's AUC (0.5: members and never-seen users look alike)",
                      "user_membership_auc": "the attack's AUC on each user's mean record loss (D_f's users vs never-seen users)",
                      "memorisation": "per seed, the untouched model's attack AUC minus Retrain's (paired), mean and 95% interval; "
                                      "the memorisation target asks its interval above 0 for `attack`",
                      "to_retrain": "on D_f: symmetric KL and L2 of full next-token distributions, L2 of weight changes, "
                                    "Bernoulli JSD of P(yes)", "noise_floor": "a second retrain (seed + 1000) against the first"},
            "per_seed": rows, "context": rows[0]["context"] | {"cpu_count": os.cpu_count()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2 short rounds, few unlearning steps")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--model", help="a Hugging Face model directory (default: the tiny demo model)")
    parser.add_argument("--workdir", help="keep the runs' files here (default: a temporary directory)")
    parser.add_argument("--log", help="append each finished seed's row here (JSON lines)")
    parser.add_argument("--from-log", help="summarise this log without running")
    parser.add_argument("--rounds", type=int, help="federated rounds (default 5)")
    parser.add_argument("--local-steps", type=int, help="local steps per round (default 30)")
    parser.add_argument("--fit-probability", type=float, default=0.9,
                        help="share of ratings that follow the user's genres (default 0.9; the rest are whims to memorise)")
    parser.add_argument("--items-per-user", type=int, default=10, help="interactions per user (default 10)")
    parser.add_argument("--result", type=Path, default=RESULT, help=f"where the JSON is saved (default {RESULT.name})")
    args = parser.parse_args()
    if args.from_log:
        rows = [json.loads(line) for line in Path(args.from_log).read_text().splitlines() if line.strip()]
        print(json.dumps(summarise(rows)))
        return
    stdout = os.dup(1)
    os.dup2(2, 1)  # everything but the JSON goes to stderr, including prints from native code
    rows, start = [], time.perf_counter()
    try:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(one_seed(args.quick, seed, args.model, Path(args.workdir or tmp) / f"seed{seed}", args.rounds,
                                     args.local_steps, args.fit_probability, args.items_per_user))
            if args.log:
                with open(args.log, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rows[-1]) + "\n")
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
    result = summarise(rows) | {"wall_s": round(time.perf_counter() - start, 1), "quick": args.quick}
    print(json.dumps(result))
    if not args.quick:
        args.result.write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
