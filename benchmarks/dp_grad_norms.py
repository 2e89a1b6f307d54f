"""Per-record LoRA gradient norms on the DP benchmark's tiny model (or SmolLM2: ``--task instruction``), against the clip norm C.

Record-level DP-SGD clips each record's gradient to C and adds noise of std sigma * C: if
almost every record's norm is far above C, clipping scales every gradient down to C and the
noise is set by C, not by the signal; far below C, the noise is many times the signal. This
measures the distribution (one backward pass per record, the plain PEFT model, no DeepSpeed)
on the first silo's training records at the untrained adapter and after plain local training,
so a clip norm can be chosen from it once (docs/privacy.md), not tuned against the results.

It also gives, for a grid of clip norms, the expected cosine of the DP-SGD gradient (clipped
mean plus the noise of ``--epsilon`` at the default sampling rate) with the true mean gradient.

Prints one JSON object: {"task", "clip_norm", "records", "parameters", "epsilon", "sampling_rate", "noise_multiplier",
"expected_batch", "checkpoints": [{"after_steps", "quantiles", "mean", "share_clipped", "alignment_by_clip_norm"}]}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from federation_split import config

from fedshield.learning.data import public_corpus, silo_examples
from fedshield.learning.model import build_tiny_base, load_base, with_lora
from fedshield.learning.recommendation import RecommendationWorkload
from fedshield.privacy import default_sampling_rate, noise_for_dp_sgd

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def record_gradients(model: torch.nn.Module, tokenizer, examples, workload: RecommendationWorkload) -> np.ndarray:
    """Each record's loss gradient over all trainable parameters, flattened: shape [records, parameters]."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for example in examples:
        model.zero_grad()
        workload.record_losses(model, tokenizer, [example]).sum().backward()
        rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).float().flatten() for p in trainable]).numpy())
    return np.stack(rows)


def alignment(grads: np.ndarray, clip_norm: float, noise_multiplier: float, expected_batch: float) -> float:
    """Expected cosine of the DP-SGD gradient (mean of clipped gradients + noise) with the true mean gradient.

    The clipped mean ``s`` against the noise's norm, ``noise_multiplier * clip_norm * sqrt(d) / expected_batch``:
    cos ~ s.g / (|g| sqrt(|s|^2 + noise^2)). Scale-free, as AdamW is: what a clip norm changes is this ratio.
    """
    norms = np.linalg.norm(grads, axis=1, keepdims=True)
    clipped = (grads * np.minimum(1.0, clip_norm / np.maximum(norms, 1e-12))).mean(axis=0)
    true = grads.mean(axis=0)
    noise = noise_multiplier * clip_norm * np.sqrt(grads.shape[1]) / expected_batch
    return float(clipped @ true / (np.linalg.norm(true) * np.sqrt(clipped @ clipped + noise**2)))


def summary(grads: np.ndarray, clip_norm: float, noise_multiplier: float, expected_batch: float, grid: list[float]) -> dict:
    norms = np.linalg.norm(grads, axis=1)
    return {"quantiles": {str(q): round(float(np.quantile(norms, q)), 4) for q in QUANTILES},
            "mean": round(float(norms.mean()), 4), "share_clipped": round(float((norms > clip_norm).mean()), 3),
            "alignment_by_clip_norm": {str(c): round(alignment(grads, c, noise_multiplier, expected_batch), 4) for c in grid}}


def instruction_setup(seed: int):
    """SmolLM2 on the first triage silo, with llm_workloads.py's LoRA and its (rounds, steps, batch, learning rate)."""
    import llm_workloads as llm

    from fedshield.config import LoraSpec

    settings = llm.DEFAULTS
    splits = llm.task_splits("instruction", seed, settings["train"], settings["val"])
    train = next(iter(splits.values())).train
    model_dir = llm.default_model(Path.home() / ".cache" / "fedshield" / "models")
    return (train, llm.task_workload("instruction", seed), LoraSpec(target_modules=llm.TARGET_MODULES),
            (settings["rounds"], settings["local_steps"], settings["batch_size"], settings["learning_rate"]),
            lambda: load_base(model_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-norm", type=float, default=1.0)
    parser.add_argument("--records", type=int, default=128)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 20, 100], help="plain training steps before each measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epsilon", type=float, default=8.0, help="the noise multiplier of this epsilon (5 rounds, delta 1e-5)")
    parser.add_argument("--grid", type=float, nargs="+", default=[0.25, 1.0, 2.0, 3.0, 5.0, 10.0])
    parser.add_argument("--task", choices=("recommendation", "instruction"), default="recommendation",
                        help="recommendation: the tiny model of dp_utility.py; instruction: SmolLM2 on llm_workloads.py's triage task")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.task == "instruction":
            train, workload, lora, (rounds, steps, batch_size, lr), load = instruction_setup(args.seed)
        else:
            cfg = config(seed=args.seed)
            train, _ = silo_examples(cfg, cfg.silo_names[0])
            workload, lora = RecommendationWorkload(), cfg.lora
            rounds, steps, batch_size, lr = cfg.rounds, cfg.training.local_steps, cfg.training.batch_size, cfg.training.learning_rate
            load = lambda: load_base(build_tiny_base(Path(tmp) / "tiny", public_corpus(cfg), seed=args.seed))  # noqa: E731
        rate = default_sampling_rate(batch_size, len(train))
        sigma = noise_for_dp_sgd(args.epsilon, rate, rounds * steps, 1e-5)
        probe = train[: args.records]
        rng = np.random.default_rng(args.seed)
        out = []
        base, tokenizer = load()
        model = with_lora(base, lora.r, lora.alpha, 0.0, lora.target_modules, seed=args.seed)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        done = 0
        for target in sorted(args.steps):
            model.train()
            for _ in range(target - done):
                batch = [train[i] for i in rng.choice(len(train), batch_size, replace=False)]
                optimizer.zero_grad()
                workload.loss(model, tokenizer, batch).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as the plain engine does (gradient_clipping 1.0)
                optimizer.step()
            done = target
            grads = record_gradients(model, tokenizer, probe, workload)
            out.append({"after_steps": target, **summary(grads, args.clip_norm, sigma, rate * len(train), args.grid)})
    print(json.dumps({"task": args.task, "clip_norm": args.clip_norm, "records": len(probe), "parameters": int(grads.shape[1]), "epsilon": args.epsilon,
                      "sampling_rate": round(rate, 4), "noise_multiplier": round(sigma, 4), "expected_batch": round(rate * len(train), 1),
                      "checkpoints": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
