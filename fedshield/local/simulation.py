"""An in-process federation: every silo's learning and update path, without processes or HTTP.

For benchmarks and tests that compare many settings (pruning, packing, DP, plaintext
FedAvg) on the same split. Each silo is a real PEFT model trained by its own DeepSpeed
engine; uploads go through the same functions as the silo agent (``release``,
``round_mask``, ``encrypt_update``, ``next_residual``, ``next_score``) and the aggregator's
``EncryptedSum`` with the public context only. What it leaves out is transport, admission,
persistence and the round deadline: the aggregator service and the silo agent own those.

Each round's plan (aggregation weights and learning-rate scales, ``aggregation.strategy``
fedavg or dynamic_balance, and PPLR warm-up weights) comes from ``plan``, as the aggregator's
does: weights from the training-set sizes bounded by the declared sample counts (equal weights
when none are declared), losses from the global model each silo last evaluated.
``run_alone`` is the local-only baseline: the same silos, steps and batches, nothing aggregated.
Record- and user-level DP-SGD (``privacy.dp``) train each silo as the agent does (``silo_dp_sgd``:
sigma solved for the planned steps); the agent's budget stop is not simulated, the plan is the budget.

``encrypted=False`` is plaintext aggregation (weighted mean of the released values, no
quantisation): a reference arm for benchmarks, never how a federation runs.

``workload`` runs any task (``learning.workloads``; default: the config's) with the silo
agent's training loop, evaluated by ``workload.evaluate`` (its headline score per silo),
on each silo's ``splits`` (default: its configured data, as the silo agent reads it).

``aggregation.personalise`` also builds each silo's PPLR personal adapter after every round, as
the silo agent does (``personal_vector`` with the warm-up weight of ``compute_mix_weights``' rule,
from the losses of the global model each silo last reported), and scores it; the global adapter
stays the federation's state. Round 0 has no reported losses (equal weights), round 1 uses the
losses after round 0 (the agent's round 0 uploads report the untrained model's).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ..config import FederationConfig
from ..crypto import EncryptedSum, EnvelopeReader, Keys, create_keys, decrypt_envelope, encrypt_update
from ..learning.data import base_model_path, silo_split
from ..learning.dp_sgd import DpSgd, silo_dp_sgd
from ..learning.model import load_base, with_lora
from ..learning.training import create_engine, load_weights, set_learning_rate, train_local_dp, train_local_stats
from ..learning.workloads import workload_for
from ..plan import compute_mix_weights, compute_plan, effective_samples
from ..privacy import release
from ..silo_agent.personal import personal_vector, shared_values
from ..updates import VectorLayout, lora_parameters, next_residual, next_score, round_mask
from ..workloads.base import Split, Workload


@dataclass
class _Silo:
    name: str
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    params: dict
    engine: Any
    train: list
    val: list
    residual: np.ndarray | None = None
    dp: DpSgd | None = None  # record- or user-level DP-SGD (privacy.dp), as the silo agent runs it


@dataclass(frozen=True)
class SimRound:
    round: int
    scores: dict[str, float]  # per-silo headline validation score (e.g. AUC) after applying the round's aggregate
    coverage: float  # fraction of shared coordinates sent at least once so far
    upload_bytes: dict[str, int]  # 0 for plaintext rounds
    kept: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # per silo, a workload's evaluation metrics
    mix_weights: dict[str, float] = field(default_factory=dict)  # personalise: each silo's warm-up weight this round
    personal_scores: dict[str, float] = field(default_factory=dict)  # and the headline score of its personal adapter
    personal_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)  # the round's aggregation weights (the plan's)

    @property
    def mean_score(self) -> float:
        return float(np.mean(list(self.scores.values())))


@dataclass
class InProcessFederation:
    """All silos of ``config`` in this process, starting from the same base model and adapter."""

    config: FederationConfig
    workdir: Path
    encrypted: bool = True
    keys: Keys | None = None
    workload: Workload | None = None  # None: the config's (``workload_for``)
    splits: dict[str, Split] | None = None  # per silo; None: its configured data (``silo_split``)
    task: Workload = field(init=False)  # the workload this federation runs
    silos: list[_Silo] = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        if self.encrypted and self.keys is None:
            self.keys = create_keys()
        self.public = self.keys.public() if self.keys is not None else None  # what the aggregator holds
        self.task = self.workload or workload_for(config)
        base_dir = base_model_path(config, Path(self.workdir))
        self.silos = []
        for name in config.silo_names:
            base, tokenizer = load_base(base_dir)
            lora = config.lora
            model = with_lora(base, lora.r, lora.alpha, lora.dropout, lora.target_modules, seed=config.seed)
            params = lora_parameters(model)
            split = self.splits[name] if self.splits else silo_split(config, name)
            train, val = list(split.train), list(split.validation)
            self.task.check(model, tokenizer, train + val)
            dp_sgd = silo_dp_sgd(config, name, [e.user for e in train])
            engine = create_engine(model, config.training, dp=dp_sgd is not None)
            self.silos.append(_Silo(name, model, tokenizer, params, engine, train, val, dp=dp_sgd[0] if dp_sgd else None))
        first = self.silos[0].params
        self.layout = VectorLayout.from_tensors(first, config.privacy.private_modules)
        self.global_shared = self.layout.flatten(first)
        self.score: np.ndarray | None = None
        self.sent_ever = np.zeros(self.layout.size, dtype=bool)
        # what the aggregator weighs by: each silo's training-set size as its join claim, bounded by the declared counts
        self.samples = effective_samples(config, {s.name: len(s.train) for s in self.silos})
        self.losses: dict[str, float] = {}  # each silo's validation loss of the last global model it evaluated
        self.weights, self.lr_scales = compute_plan(config, self.samples, self.losses)  # the open round's plan

    def _secret_keys(self) -> Keys:
        """The silos' key set (an encrypted federation has one from ``__post_init__``)."""
        if self.keys is None:
            raise RuntimeError("this federation runs in plaintext: it has no key set")
        return self.keys

    def _train(self, silo: _Silo, round: int, lr_scale: float = 1.0) -> None:
        """``silo``'s local steps of ``round`` (batches drawn from a seed of the federation, silo and round)."""
        training = self.config.training
        set_learning_rate(silo.engine, training.learning_rate * lr_scale)
        seed = zlib.crc32(f"{self.config.seed}/{silo.name}/{round}".encode())
        if silo.dp is not None:
            train_local_dp(silo.engine, silo.tokenizer, silo.train, training.local_steps, silo.dp, seed=seed, workload=self.task)
        else:
            train_local_stats(silo.engine, silo.tokenizer, silo.train, training.local_steps, training.batch_size, seed=seed,
                              workload=self.task)

    def run(self, rounds: int | None = None) -> list[SimRound]:
        return [self.run_round(r) for r in range(rounds if rounds is not None else self.config.rounds)]

    def run_round(self, round: int, evaluate: bool = True) -> SimRound:
        config, layout = self.config, self.layout
        mask = round_mask(layout.size, config.privacy.pruning, round, config.seed, score=self.score,
                          explore_share=config.privacy.explore_share)
        packing = config.packing()
        total = EncryptedSum(self.public, round, mask.size, packing=packing, layout=layout.digest) if self.public else None
        plain_sum = np.zeros(mask.size)
        upload_bytes: dict[str, int] = {}
        own: dict[str, np.ndarray] = {}
        self.weights, self.lr_scales = compute_plan(config, self.samples, self.losses)
        mix = compute_mix_weights(config, self.losses, round)
        for silo in self.silos:
            self._train(silo, round, self.lr_scales.get(silo.name, 1.0))
            own[silo.name] = layout.flatten(silo.params)
            delta = own[silo.name] - self.global_shared
            update = release(delta, silo.residual, config.dp_budget(silo.name))
            weight = self.weights[silo.name]
            if total is not None:
                encrypted = encrypt_update(self._secret_keys(), update[mask], weight=weight, round=round, silo=silo.name,
                                           packing=packing, layout=layout.digest, rng=np.random.default_rng(
                                               zlib.crc32(f"{config.seed}/{silo.name}/{round}/rounding".encode())))
                total.add(EnvelopeReader.from_bytes(encrypted.data))
                sent, upload_bytes[silo.name] = encrypted.sent, len(encrypted.data)
            else:
                sent, upload_bytes[silo.name] = update[mask], 0
                plain_sum += weight * sent
            silo.residual = next_residual(update, mask, sent)
        if total is not None:
            average = decrypt_envelope(self._secret_keys(), EnvelopeReader.from_bytes(total.to_bytes()), round=round,
                                       count=mask.size, layout=layout.digest)
        else:
            average = plain_sum / sum(self.weights.values())
        self.global_shared = self.global_shared.copy()
        self.global_shared[mask] += average
        self.score = next_score(self.score, average, mask, layout.size)
        self.sent_ever[mask] = True
        scores, metrics, personal_scores, personal_metrics = {}, {}, {}, {}
        for silo in self.silos:
            if evaluate and silo.name in mix:
                vector = personal_vector(own[silo.name], self.global_shared, mix[silo.name], len(self.silos))
                with shared_values(layout, silo.params, vector, restore=self.global_shared):
                    personal = self.task.evaluate(silo.model, silo.tokenizer, silo.val)
                personal_scores[silo.name], personal_metrics[silo.name] = personal.score, personal.metrics
            load_weights(silo.engine, layout, silo.params, self.global_shared)
            if evaluate:
                evaluation = self.task.evaluate(silo.model, silo.tokenizer, silo.val)
                scores[silo.name], metrics[silo.name] = evaluation.score, evaluation.metrics
                self.losses[silo.name] = evaluation.metrics[self.task.loss_metric]
        return SimRound(round, scores, float(self.sent_ever.mean()), upload_bytes, int(mask.size), metrics, mix,
                        personal_scores, personal_metrics, dict(self.weights))

    def run_alone(self, rounds: int, evaluate_every: int = 1) -> list[SimRound]:
        """The local-only baseline: every silo trains its own adapter from the same start, with the same steps and
        batches (the same per-round seeds) as in the federation, and nothing is aggregated. Call it on a fresh
        federation, instead of ``run``; rounds are scored every ``evaluate_every`` rounds and at the last."""
        out = []
        for round in range(rounds):
            scores, metrics = {}, {}
            for silo in self.silos:
                self._train(silo, round)
                if (round + 1) % evaluate_every == 0 or round == rounds - 1:
                    evaluation = self.task.evaluate(silo.model, silo.tokenizer, silo.val)
                    scores[silo.name], metrics[silo.name] = evaluation.score, evaluation.metrics
            if scores:
                out.append(SimRound(round, scores, 0.0, {s.name: 0 for s in self.silos}, 0, metrics))
        return out
