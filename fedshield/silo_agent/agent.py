"""The silo agent's round loop.

Per round: wait for the plan; train locally at the planned learning rate; take the
shared update (``delta`` against the global state), add error feedback, keep the
round's masked coordinates, encrypt and upload them with the loss and score of the
global model the round started from; fetch the aggregate, decrypt it and apply it to
the shared LoRA tensors; evaluate; checkpoint. Private LoRA modules are trained but
never read into the update vector. What is learned, from which files and how it is
scored is the federation's workload (``learning.workloads``).

A silo with several ranks (torchrun: WORLD_SIZE > 1) runs this agent on each. Rank 0 alone
talks to the aggregator, encrypts, decrypts, evaluates, checkpoints and exports; it sends
the other ranks (``_follow``) its state at start, each round's training order (learning
rate, batch seed) and the decrypted global vector, and checkpoints only after every rank has done
what it was told and sent rank 0 its partition of the optimiser state (ZeRO 1-2 partition it; the
parameters stay whole on every rank up to stage 2).
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import metrics
from ..config import MULTI_NODE_DP_SGD_MESSAGE, FederationConfig
from ..crypto import EnvelopeReader, Keys, decrypt_envelope, encrypt_update
from ..learning.data import base_model_path, silo_split
from ..learning.dp_sgd import silo_dp_sgd
from ..learning.lockstep import lockstep
from ..learning.model import load_base, with_lora
from ..learning.training import (
    barrier,
    broadcast,
    check_batch_split,
    create_engine,
    load_optimizer_state,
    load_weights,
    optimizer_state,
    refresh_master_weights,
    set_learning_rate,
    train_local_dp,
    train_local_stats,
    whole_parameters,
    world,
)
from ..learning.workloads import workload_for
from ..privacy import release
from ..updates import VectorLayout, lora_parameters, next_residual, next_score, round_mask, scatter
from ..wire.client import AggregatorClient, AggregatorRefused, ClientSecurity
from ..wire.errors import FEDERATION_OVER, ErrorCode
from ..wire.messages import EpsilonUnit, JoinRequest, UploadMetadata
from ..workloads.base import Evaluation
from .bounds import check_unlearning
from .checkpoint import PendingUpload, SiloState, forgotten_users, load_state, save_state
from .personal import PERSONAL_ADAPTER, drop_personal, personal_vector, save_peft, shared_values

log = logging.getLogger("fedshield.silo")


@dataclass(frozen=True)
class RoundRecord:
    round: int
    silo: str
    train_loss: float | None  # None when the silo missed the round
    val_loss: float  # the workload's validation loss of the global model after this round
    score: float  # its headline score (``metric``), in [0, 1]
    metric: str
    upload_bytes: int
    download_bytes: int
    kept: int
    encrypt_s: float
    decrypt_s: float
    train_s: float
    round_s: float
    train_tokens: int
    ciphertexts: int
    weight: float
    lr_scale: float
    epsilon: float | None
    epsilon_unit: EpsilonUnit | None = None  # what epsilon protects: silo, record or user (None without DP)
    metrics: dict[str, float] | None = None  # every metric of the workload's evaluation
    start_score: float | None = None  # the score of the global model the round started from (round 0: the base model's)
    start_metrics: dict[str, float] | None = None  # and all its metrics
    mix_weight: float | None = None  # personalise: this silo's warm-up weight (None: off, or it did not contribute)
    personal_score: float | None = None  # the headline score of adapter-personal after this round
    personal_metrics: dict[str, float] | None = None  # and all its metrics


class SiloAgent:
    rank, ranks = 0, 1  # this process's rank among the silo's ranks (torchrun), and how many there are

    def __init__(self, config: FederationConfig, silo: str, keys: Keys, workdir: str | Path, aggregator_url: str,
                 model_cache: str | Path | None = None, security: ClientSecurity | None = None):
        if silo not in config.silo_names:
            raise ValueError(f"silo {silo!r} is not in the federation's config")
        if not keys.has_secret_key:
            raise ValueError("a silo needs the secret context to decrypt aggregates")
        config.check_keys(keys.params)  # privacy.encryption, when set, names the key set's parameters
        self.rank, self.ranks = world()
        self.zero3 = config.training.zero_stage == 3  # parameters partitioned: reading them is a collective of every rank
        if self.ranks > 1:  # at start, before any model is loaded: the spec's check, against the world torchrun gave us
            check_batch_split(config.training.batch_size, self.ranks, silo)
        self.config, self.silo, self.keys = config, silo, keys
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.client = AggregatorClient(aggregator_url, security=security)
        gone = forgotten_users(self.workdir)  # users this silo has unlearned: their records are never used again
        self.workload = workload_for(config)
        split = silo_split(config, silo)  # bad files: a DataError naming file and line, before anything is trained
        self.train, self.val = ([e for e in part if e.user not in gone] for part in (split.train, split.validation))
        self.model_cache = Path(model_cache or self.workdir)
        base, self.tokenizer = load_base(base_model_path(config, self.model_cache))
        self.workload.check(base, self.tokenizer, self.train + self.val)  # e.g. longer than the context: refused before round 1
        lora = config.lora
        self.model = with_lora(base, lora.r, lora.alpha, lora.dropout, lora.target_modules, seed=config.seed)
        self.params = lora_parameters(self.model)
        self.layout = VectorLayout.from_tensors(self.params, config.privacy.private_modules)
        # DP: silo level (noise once on each round's update) or DP-SGD at record / user level (noise at every step)
        self.budget = config.dp_budget(silo)
        self.dp_sgd = silo_dp_sgd(config, silo, [e.user for e in self.train])
        if self.dp_sgd is not None and self.ranks > 1:
            raise ValueError(f"{MULTI_NODE_DP_SGD_MESSAGE} (silo {silo} runs {self.ranks} ranks)")
        self.engine = create_engine(self.model, config.training, dp=self.dp_sgd is not None)
        state = broadcast(load_state(self.workdir) if self.rank == 0 else None)
        if state is None:
            with self._whole():  # every rank
                state = SiloState(round_done=-1, global_shared=self.layout.flatten(self.params), lora=self._lora_snapshot())
        self.state = state
        self._live_moments = False  # the engine's optimiser moments are the checkpoint's (loaded before training) or fresh
        self._restore_weights()
        self._restore_personal()

    def _restore_personal(self) -> None:
        """A silo stopped between writing and committing adapter-personal rewrites it from its checkpoint."""
        if self.rank == 0 and self.state.personal_shared is not None and not (self.workdir / PERSONAL_ADAPTER / "adapter_config.json").exists():
            with shared_values(self.layout, self.params, self.state.personal_shared, restore=self.state.global_shared):
                save_peft(self.model, self.workdir / PERSONAL_ADAPTER)

    def _lora_snapshot(self) -> dict:
        """The LoRA tensors, copied to the CPU (under ZeRO-3 inside ``_whole`` or ``_gathered``)."""
        return {n: p.detach().to("cpu", copy=True) for n, p in self.params.items()}

    def _whole(self, modify: bool = False):
        """The LoRA tensors whole inside the block (``whole_parameters``: under ZeRO-3 a collective every rank enters)."""
        return whole_parameters(self.engine, self.params.values(), modify)

    def _gathered(self):
        """Rank 0 about to read the LoRA tensors alone: under ZeRO-3 it first tells the other ranks to join the gather."""
        if self.zero3:
            self._tell("gather")
        return self._whole()

    def _restore_weights(self) -> None:
        import torch

        with torch.no_grad(), self._whole(modify=True):  # every rank
            for name, tensor in self.state.lora.items():
                self.params[name].copy_(tensor)
        refresh_master_weights(self.engine)

    def _resume_moments(self) -> None:
        """Before this process's first training step (every rank): the checkpoint's optimiser moments into the engine
        (under ZeRO 1-3 each rank takes its partition). A run that never trains (unlearning, applying a published
        unlearning after the last round) never loads them, so a one-process run on a multi-rank silo's checkpoint works and
        keeps them as they are."""
        if not self._live_moments and self.state.optimizer is not None:
            load_optimizer_state(self.engine, self.state.optimizer)
        self._live_moments = True

    def _moments(self):
        """The checkpoint's optimiser state (every rank: also the barrier): the engine's once it has trained, else what
        the last checkpoint held."""
        if self._live_moments:
            return optimizer_state(self.engine)
        barrier()
        return self.state.optimizer

    def _checkpoint(self) -> None:
        """Persist the LoRA tensors, optimiser moments and round state atomically (rank 0, once every rank is there).

        Under ZeRO 1-3 each rank holds only its partition of the moments: ``optimizer_state`` gathers them on rank 0, so
        the one state file holds every rank's partition of the same round (a crash never mixes rounds); under ZeRO-3 the
        LoRA tensors are gathered whole as well."""
        self._tell("checkpoint")
        optimizer = self._moments()  # every rank (the ranks > 0 in ``_follow``): the barrier
        with self._gathered():
            lora = self._lora_snapshot()
        if self.rank != 0:
            return
        self.state.lora, self.state.optimizer = lora, optimizer
        save_state(self.workdir, self.state)

    def evaluate(self) -> Evaluation:
        """The workload's metrics of the model as it stands on this silo's validation examples. Under ZeRO-3 every rank
        runs the same forward passes (each gathers the layers it computes): rank 0 tells the others to."""
        if self.zero3:
            self._tell("evaluate")
        return self._evaluate()

    def _evaluate(self) -> Evaluation:
        with lockstep(self.zero3 and self.ranks > 1):  # early exits (greedy decoding) agreed by every rank
            return self.workload.evaluate(self.model, self.tokenizer, self.val)

    def _global_evaluation(self) -> Evaluation:
        """The evaluation of the global model this round starts from: the last round's, else the initial adapter's."""
        if self.state.history and self.state.history[-1].get("metrics"):
            last = self.state.history[-1]
            return Evaluation(last["metrics"], last["metric"])
        return self.evaluate()

    def run(self) -> list[dict]:
        """Take part in every remaining round, then save the federated adapter.

        A federation that finishes or stops while this silo is in a round (``federation_finished``,
        ``federation_stopped``) ends the loop cleanly: the adapter is saved as it stands. Ranks > 0 follow rank 0."""
        if self.rank != 0:
            return self._follow()
        plan = self.client.join(JoinRequest(
            silo=self.silo, samples=len(self.train), vector_size=self.layout.size, layout=self.layout.digest,
        ))
        metrics.SILO_SHARED_PARAMETERS.labels(self.silo).set(self.layout.size)
        metrics.SILO_ROUND.labels(self.silo).set(self.state.round_done)
        self._count_history()
        log.info("%s joined: %s workload, %d training examples, %d shared values", self.silo, self.workload.name, len(self.train),
                 self.layout.size)
        budget = self.budget or (self.dp_sgd[1] if self.dp_sgd else None)
        while self.state.round_done + 1 < plan.rounds_total:
            contributions = self.state.round_done + 2  # every round so far, and the next one
            if budget is not None and not budget.allows(self._dp_releases(contributions)):
                reason = (f"privacy budget spent: a further round would reach {self.config.privacy.dp.unit}-level epsilon "
                          f"{budget.spent(self._dp_releases(contributions)):.3f} > {budget.epsilon_budget} (delta {budget.delta})")
                log.warning("%s withdraws: %s", self.silo, reason)
                self.client.withdraw(self.silo, reason)
                break
            try:
                record = self.run_round(self.state.round_done + 1)
            except AggregatorRefused as exc:
                if exc.code not in FEDERATION_OVER:
                    raise
                log.warning("%s stops: the federation is over (%s: %s); keeping the global adapter of round %d",
                            self.silo, exc.code, exc.detail, self.state.round_done)
                break
            self.state.history.append(record.__dict__)
            with open(self.workdir / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record.__dict__) + "\n")
        self.apply_unlearnings()
        self.save_adapter(self.workdir / "adapter")
        broadcast(None)  # the other ranks stop
        return self.state.history

    def _follow(self) -> list[dict]:
        """Ranks > 0: every collective rank 0 takes part in, in its order, until it says stop (None): train, take the
        global vector, give rank 0 the checkpoint's optimiser partition; under ZeRO-3 also gather the LoRA tensors rank 0
        reads and run the forward passes of its evaluations."""
        training = self.config.training
        while (order := broadcast()) is not None:
            kind, value, seed = order
            if kind == "train":
                self._resume_moments()
                set_learning_rate(self.engine, value)
                train_local_stats(self.engine, self.tokenizer, self.train, training.local_steps, training.batch_size,
                                  seed=seed, workload=self.workload)
            elif kind == "assign":
                self.state.global_shared = value
                load_weights(self.engine, self.layout, self.params, value)  # every rank refreshes its master partition
            elif kind == "checkpoint":
                self._moments()  # rank 0's checkpoint: its barrier, and this rank's optimiser partition
            elif kind == "gather":
                with self._whole():
                    pass
            elif kind == "evaluate":
                self._evaluate()
            else:
                raise RuntimeError(f"rank {self.rank}: unknown order {kind!r} from rank 0")
        return []

    def _tell(self, kind: str, value=None, seed: int = 0) -> None:
        """Rank 0: order the other ranks to ``train`` (value: the learning rate), ``assign`` (value: the global vector),
        ``checkpoint``, ``gather`` or ``evaluate`` (``_follow``), before rank 0 does the same."""
        if self.ranks > 1:
            broadcast((kind, value, seed))

    def _prepare_upload(self, round: int, plan) -> tuple[PendingUpload, float, float, int]:
        """Train locally, then build (and checkpoint) this round's encrypted upload."""
        state = self.state
        lr = self.config.training.learning_rate * plan.lr_scales.get(self.silo, 1.0)
        t = time.perf_counter()
        seed = zlib.crc32(f"{self.config.seed}/{self.silo}/{round}".encode())
        self._tell("train", lr, seed)
        self._resume_moments()  # before the round's learning rate: a loaded state dict brings its own
        set_learning_rate(self.engine, lr)
        training = self.config.training
        train_loss: float | None
        if self.dp_sgd is not None:
            train_loss, tokens = train_local_dp(self.engine, self.tokenizer, self.train, training.local_steps, self.dp_sgd[0],
                                                seed=seed, micro_batch=training.batch_size, workload=self.workload)
        else:
            train_loss, tokens = train_local_stats(self.engine, self.tokenizer, self.train, training.local_steps,
                                                   training.batch_size, seed=seed, workload=self.workload)
        if not math.isfinite(train_loss):
            train_loss = None  # every Poisson batch was empty: no loss to report (the noise-only steps still happened)
        train_s = time.perf_counter() - t
        with self._gathered():
            delta = self.layout.flatten(self.params) - state.global_shared
        update = release(delta, state.residual, self.budget)
        mask = self._mask(round, plan)
        encrypted = encrypt_update(
            self.keys, update[mask], weight=plan.weights[self.silo], round=round, silo=self.silo,
            packing=self.config.packing(), layout=self.layout.digest,
        )
        pending = PendingUpload(round, encrypted.data, mask, next_residual(update, mask, encrypted.sent), train_loss,
                                mix_weight=plan.mix_weight if self.config.aggregation.personalise else None)
        state.pending = pending
        self._checkpoint()  # a crash from here on re-sends these exact bytes
        return pending, train_s, encrypted.encrypt_s, tokens

    def _mask(self, round: int, plan) -> np.ndarray:
        return round_mask(self.layout.size, plan.pruning, round, plan.mask_seed, score=self.state.score,
                          explore_share=plan.explore_share)

    def run_round(self, round: int) -> RoundRecord:
        """Contribute to ``round`` if it is still open (or re-send what a crash left pending), then apply its aggregate.

        A silo that was down while the round closed does not contribute; it catches up by
        applying the round's aggregate, so it rejoins from the current global state.
        """
        start = time.perf_counter()
        plan = self.client.wait_for_round(round, silo=self.silo)
        state = self.state
        pending = state.pending if state.pending is not None and state.pending.round == round else None
        train_s = encrypt_s = 0.0
        tokens = 0
        started_from = self._global_evaluation() if pending is None else None  # before local training moves the weights
        if pending is None and plan.state == "open" and plan.round == round:
            pending, train_s, encrypt_s, tokens = self._prepare_upload(round, plan)
        upload_bytes, spent, residual = 0, None, state.residual
        if pending is not None:
            started_from = started_from or self._global_evaluation()
            spent = self._epsilon_after(round)
            try:
                receipt = self.client.upload(round, self.silo, pending.data, UploadMetadata(
                    samples=len(self.train), train_loss=pending.train_loss, epsilon=spent,
                    epsilon_unit=self.config.privacy.dp.unit if spent is not None else None,
                    val_loss=started_from.metrics[self.workload.loss_metric], val_score=started_from.score,
                ))
                upload_bytes, residual = receipt.bytes, pending.residual
            except AggregatorRefused as exc:
                if exc.code is not ErrorCode.ROUND_CLOSED:
                    raise
                # Not counted: everything this upload carried stays in error feedback.
                sent = decrypt_envelope(self.keys, EnvelopeReader.from_bytes(pending.data))
                residual = pending.residual + scatter(sent, pending.mask, self.layout.size)
                spent = None
                log.warning("%s: round %d closed before its upload arrived; catching up", self.silo, round)
        else:
            log.warning("%s missed round %d; catching up from its aggregate", self.silo, round)
        mask = pending.mask if pending is not None else self._mask(round, plan)
        aggregate = self.client.aggregate(round)
        t = time.perf_counter()
        reader = EnvelopeReader.from_bytes(aggregate)
        average = decrypt_envelope(self.keys, reader, round=round, count=mask.size, layout=self.layout.digest)
        decrypt_s = time.perf_counter() - t
        # personalise: what this silo trained, when its upload counted (adapter-personal mixes it in)
        own = None
        if self.config.aggregation.personalise and upload_bytes:
            with self._gathered():
                own = self.layout.flatten(self.params)
        state.global_shared = state.global_shared.copy()
        state.global_shared[mask] += average
        state.score = next_score(state.score, average, mask, self.layout.size)
        state.residual = residual
        self._tell("assign", state.global_shared)
        load_weights(self.engine, self.layout, self.params, state.global_shared)
        mix_weight = pending.mix_weight if pending is not None and upload_bytes else None
        personal = self._personalise(own, mix_weight, reader.header.contributors)
        state.pending, state.round_done = None, round
        evaluation = self.evaluate()
        self._checkpoint()
        record = RoundRecord(
            round=round, silo=self.silo, train_loss=pending.train_loss if pending else None,
            val_loss=evaluation.metrics[self.workload.loss_metric], score=evaluation.score, metric=evaluation.headline,
            metrics=dict(evaluation.metrics), start_score=started_from.score if started_from else None,
            start_metrics=dict(started_from.metrics) if started_from else None,
            upload_bytes=upload_bytes, download_bytes=len(aggregate), kept=int(mask.size),
            encrypt_s=encrypt_s, decrypt_s=decrypt_s, train_s=train_s, round_s=time.perf_counter() - start, train_tokens=tokens,
            ciphertexts=self.config.packing().ciphertexts_for(int(mask.size), self.keys.params) if upload_bytes else 0,
            weight=plan.weights.get(self.silo, 0.0) if upload_bytes else 0.0,
            lr_scale=plan.lr_scales.get(self.silo, 1.0), epsilon=spent,
            epsilon_unit=self.config.privacy.dp.unit if spent is not None else None,
            mix_weight=mix_weight if personal else None, personal_score=personal.score if personal else None,
            personal_metrics=dict(personal.metrics) if personal else None,
        )
        self._export(record)
        log.info("%s round %d: loss %.4f %s %.3f", self.silo, round, record.val_loss, record.metric, record.score)
        return record

    def _personalise(self, own: np.ndarray | None, mix_weight: float | None, contributors: tuple[str, ...]) -> Evaluation | None:
        """personalise: build, evaluate and save adapter-personal from this round's own parameters and the new global ones.

        Only when this silo's upload is in the aggregate (the others' sum is ``n * mean - own``); else the last one stays."""
        if not self.config.aggregation.personalise or own is None or mix_weight is None or self.silo not in contributors:
            return None
        vector = personal_vector(own, self.state.global_shared, mix_weight, len(contributors))
        with shared_values(self.layout, self.params, vector, restore=self.state.global_shared):
            evaluation = self.evaluate()
            save_peft(self.model, self.workdir / PERSONAL_ADAPTER)
        self.state.personal_shared = vector  # committed with the round's checkpoint
        return evaluation

    def _dp_releases(self, rounds: int) -> int:
        """What the accountant counts after ``rounds`` contributions: rounds (silo level) or DP-SGD steps."""
        return rounds * self.config.training.local_steps if self.dp_sgd is not None else rounds

    def _epsilon_after(self, round: int) -> float | None:
        """Epsilon spent once this silo has contributed to rounds 0..``round`` (None without DP)."""
        budget = self.budget or (self.dp_sgd[1] if self.dp_sgd else None)
        return budget.spent(self._dp_releases(round + 1)) if budget is not None else None

    def _count_history(self) -> None:
        """After a restart, the byte and token counters start from what this silo's checkpoint says it sent."""
        for r in self.state.history:
            metrics.SILO_UPLOAD_BYTES.labels(self.silo).inc(r["upload_bytes"])
            metrics.SILO_DOWNLOAD_BYTES.labels(self.silo).inc(r["download_bytes"])
            metrics.SILO_CIPHERTEXTS.labels(self.silo).inc(r.get("ciphertexts", 0))
            metrics.SILO_TRAIN_TOKENS.labels(self.silo).inc(r.get("train_tokens", 0))

    def _export(self, r: RoundRecord) -> None:
        silo = self.silo
        metrics.SILO_UPLOAD_BYTES.labels(silo).inc(r.upload_bytes)
        metrics.SILO_DOWNLOAD_BYTES.labels(silo).inc(r.download_bytes)
        metrics.SILO_CIPHERTEXTS.labels(silo).inc(r.ciphertexts)
        metrics.SILO_KEPT_PARAMETERS.labels(silo).set(r.kept)
        if r.upload_bytes:
            metrics.SILO_UPLOAD_PLAIN_RATIO.labels(silo).set(r.upload_bytes / (4 * self.layout.size))
            metrics.SILO_ENCRYPT_SECONDS.labels(silo).observe(r.encrypt_s)
        metrics.SILO_DECRYPT_SECONDS.labels(silo).observe(r.decrypt_s)
        metrics.SILO_ROUND_SECONDS.labels(silo).observe(r.round_s)
        if r.train_loss is not None:
            metrics.SILO_TRAIN_LOSS.labels(silo).set(r.train_loss)
            metrics.SILO_TRAIN_TOKENS.labels(silo).inc(r.train_tokens)
            metrics.SILO_TOKENS_PER_SECOND.labels(silo).set(r.train_tokens / max(r.train_s, 1e-9))
        metrics.SILO_VALIDATION_SCORE.labels(silo).set(r.score)
        metrics.SILO_WORKLOAD.labels(silo, self.workload.name, r.metric).set(1)
        metrics.SILO_VALIDATION_LOSS.labels(silo).set(r.val_loss)
        metrics.SILO_ROUND.labels(silo).set(r.round)  # last: a scrape showing the round shows all of it

    def apply_unlearnings(self) -> int:
        """Apply every unlearning the aggregator published since this silo last looked (a delta on the shared adapter)."""
        applied = 0
        for record in self.client.unlearnings()[self.state.unlearnings_applied:]:
            data = self.client.unlearning_aggregate(record.version)
            reader = EnvelopeReader.from_bytes(data)
            delta = decrypt_envelope(self.keys, reader, round=self.config.rounds + record.version,
                                     count=self.layout.size, layout=self.layout.digest)
            check_unlearning(self.config, reader.header.packing, reader.header.weight, delta)  # before applying anything
            self.state.global_shared = self.state.global_shared + delta
            self._tell("assign", self.state.global_shared)
            load_weights(self.engine, self.layout, self.params, self.state.global_shared)
            self.state.unlearnings_applied = record.version + 1
            self._drop_personal()
            self._checkpoint()
            applied += 1
            log.info("%s applied unlearning %d (from %s): adapter version %d", self.silo, record.version, record.silo,
                     record.adapter_version_after)
        if applied:
            self.save_adapter(self.workdir / "adapter")
        return applied

    def forget_local_state(self, private: dict) -> None:
        """After unlearning here: new private layers; no residual, mask scores, pending upload or optimiser moments
        computed from the forgotten records; the checkpoint rewritten without them."""
        import torch

        with torch.no_grad(), self._whole(modify=True):  # one process (an unlearning run)
            for name, tensor in private.items():
                self.params[name].copy_(tensor.to(self.params[name].dtype))
        self.engine.optimizer.state.clear()
        self.state.optimizer, self._live_moments = None, False  # the next training starts with fresh moments
        gone = forgotten_users(self.workdir)
        self.train = [e for e in self.train if e.user not in gone]
        self.val = [e for e in self.val if e.user not in gone]
        self.state.residual = self.state.score = self.state.pending = None
        self._drop_personal()
        self._checkpoint()

    def _drop_personal(self) -> None:
        """An unlearning replaced the global adapter: the personal one mixed the old one (and, at the silo that forgot,
        parameters trained on the forgotten records), so it is removed; the next training round would rebuild it."""
        if self.state.personal_shared is not None or (self.workdir / PERSONAL_ADAPTER).exists():
            log.info("%s: adapter-personal removed (the global adapter it mixed was replaced by an unlearning)", self.silo)
        self.state.personal_shared = None
        drop_personal(self.workdir)

    def save_adapter(self, out: Path) -> Path:
        """The federated adapter in PEFT format (private modules included: they belong to this silo)."""
        with self._gathered():
            self.model.save_pretrained(str(out))  # peft types the directory as str
        return out
