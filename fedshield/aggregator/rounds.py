"""The aggregator's round state machine, independent of HTTP.

Silos join (all configured silos, each once); round 0 opens; a round closes when
every silo has uploaded, or when its deadline has passed with at least
``min_silos`` uploads; its aggregate is written; the next round opens. Every
decision is persisted first (see ``store``), so a restarted aggregator resumes
where it stopped, counting each accepted upload exactly once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

from ..config import FederationConfig
from ..crypto import CryptoError, EncryptedSum, EnvelopeReader, Keys
from ..crypto.envelope import save_envelope
from ..faults import crash_point
from ..fairness import fedavg_weights, loss_weights, lr_scales
from ..updates import kept_count
from ..wire.messages import JoinRequest, RoundPlan, RoundSummary, Status, UploadMetadata, UploadReceipt
from ..wire.unlearning import UnlearningAudit, UnlearningRecord
from . import telemetry
from .store import Store

log = logging.getLogger("fedshield.aggregator")

CRYPTO_ERROR_CODES = {
    "FormatError": "malformed_envelope",
    "ChecksumError": "checksum_mismatch",
    "KeyMismatchError": "key_fingerprint_mismatch",
    "RoundMismatchError": "wrong_round",
    "LengthMismatchError": "wrong_length",
    "CiphertextError": "bad_ciphertext",
}


class ApiError(Exception):
    """A refused request: HTTP status, stable code, and a message for a person."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Coordinator:
    def __init__(self, config: FederationConfig, public_keys: Keys, store: Store):
        if public_keys.has_secret_key:
            raise ValueError("the aggregator must be given the public context only (it holds a secret key)")
        self.config, self.keys, self.store = config, public_keys, store
        self._lock = threading.RLock()
        self._sum: EncryptedSum | None = None
        self.current: int | None = None  # open round; None before round 0
        self.finished = False
        # The open round's plan, fixed when it opens (silos poll it several times a second).
        self._weights: dict[str, float] = {}
        self._lr_scales: dict[str, float] = {}
        self._deadline_at: float | None = None
        self._restore()

    # --- state ---------------------------------------------------------------------------

    def _restore(self) -> None:
        rounds = self.store.rounds()
        closed = [r for r in rounds if r["closed_at"] is not None]
        if len(closed) >= self.config.rounds:
            self.finished = True
            if self._joined():
                self._fix_plan(opened_at=None)
            return
        open_rows = [r for r in rounds if r["closed_at"] is None]
        if open_rows:
            self.current = open_rows[0]["round"]
            self._fix_plan(open_rows[0]["opened_at"])
            self._sum = self._new_sum()
            for row in self.store.uploads(self.current):
                with EnvelopeReader.open(row.path) as reader:
                    self._sum.add(reader)
            log.info("resumed round %d with %d accepted uploads", self.current, len(self._sum.contributors))
        else:
            self._maybe_start()
        self._publish()

    def _joined(self) -> dict[str, tuple[int, int, str]]:
        return self.store.silos()

    def _vector(self) -> tuple[int, str] | None:
        joined = self._joined()
        if not joined:
            return None
        _, size, layout = next(iter(joined.values()))
        return size, layout

    def _new_sum(self) -> EncryptedSum:
        size, layout = self._vector()
        return EncryptedSum(
            self.keys, round=self.current, count=kept_count(size, self.config.privacy.pruning),
            packing=self.config.packing(), layout=layout,
        )

    def _maybe_start(self) -> None:
        if self.current is None and set(self._joined()) == set(self.config.silo_names):
            self._open(0)

    def _open(self, round: int) -> None:
        self.store.open_round(round)
        self.current = round
        opened_at = next(r["opened_at"] for r in self.store.rounds() if r["round"] == round)
        self._fix_plan(opened_at)
        self._sum = self._new_sum()
        log.info("round %d open", round)
        self._publish()

    def _expected(self) -> list[str]:
        withdrawn = self.store.withdrawn()
        return [s for s in self.config.silo_names if s not in withdrawn]

    def _publish(self) -> None:
        """Export the state as Prometheus gauges (a few small queries, at state changes only)."""
        expected = self._expected()
        telemetry.publish_plan(self.config.rounds if self.finished else (self.current or 0), self.config.rounds,
                               self._weights, self._lr_scales, expected, len(self._sum.contributors) if self._sum else 0)
        telemetry.publish_silos(self.config.silo_names, self.store.withdrawn())
        closed = [r for r in self.store.rounds() if r["closed_at"] is not None]
        if closed:
            reports = {u.silo: u.metadata for u in self.store.uploads(closed[-1]["round"])}
            telemetry.publish_reports(reports, expected, closed[-1]["contributors"])
        telemetry.publish_unlearnings(self.store.unlearnings(), len(closed))

    def _fix_plan(self, opened_at: float | None) -> None:
        """Weights, learning-rate scales and deadline of the round: they depend only on closed rounds."""
        samples = {name: s for name, (s, _, _) in self._joined().items()}
        agg = self.config.aggregation
        if agg.strategy == "dynamic_balance":
            losses = self._last_losses()
            self._weights = loss_weights(samples, losses, q=agg.q)
            self._lr_scales = lr_scales(losses, list(self.config.silo_names), gamma=agg.gamma)
        else:
            self._weights = fedavg_weights(samples)
            self._lr_scales = {name: 1.0 for name in self.config.silo_names}
        self._deadline_at = None if opened_at is None else opened_at + agg.round_deadline_s

    def _last_losses(self) -> dict[str, float]:
        """Each silo's most recent validation loss from closed rounds (stable while a round is open)."""
        losses: dict[str, float] = {}
        for row in self.store.rounds():
            if row["closed_at"] is not None:
                for upload in self.store.uploads(row["round"]):
                    if upload.metadata.get("val_loss") is not None:
                        losses[upload.silo] = upload.metadata["val_loss"]
        return losses

    def weights(self) -> dict[str, float]:
        """This round's aggregation weights: FedAvg sample shares, or dynamic balance by validation loss."""
        return dict(self._weights)

    def lr_scales(self) -> dict[str, float]:
        return dict(self._lr_scales)

    def _deadline(self) -> float | None:
        return self._deadline_at if self.current is not None else None

    # --- queries -------------------------------------------------------------------------

    def plan(self) -> RoundPlan:
        with self._lock:
            vector = self._vector()
            state = "finished" if self.finished else ("open" if self.current is not None else "waiting_for_silos")
            deadline = self._deadline()
            return RoundPlan(
                state=state,
                round=self.config.rounds if self.finished else (self.current or 0),
                rounds_total=self.config.rounds,
                mask_seed=self.config.seed,
                pruning=self.config.privacy.pruning,
                explore_share=self.config.privacy.explore_share,
                vector_size=vector[0] if vector else None,
                kept=kept_count(vector[0], self.config.privacy.pruning) if vector else None,
                layout=vector[1] if vector else None,
                weights=self.weights() if state != "waiting_for_silos" else {},
                lr_scales=self.lr_scales() if state == "open" else {},
                withdrawn=self.store.withdrawn(),
                deadline_s=max(0.0, deadline - time.time()) if deadline and state == "open" else None,
            )

    def status(self) -> Status:
        with self._lock:
            closed = []
            for row in self.store.rounds():
                if row["closed_at"] is None:
                    continue
                uploads = {u.silo: u for u in self.store.uploads(row["round"])}
                closed.append(
                    RoundSummary(
                        round=row["round"], contributors=row["contributors"], weight_sum=row["weight_sum"],
                        metadata={s: UploadMetadata(**u.metadata) for s, u in uploads.items()},
                        upload_bytes={s: u.bytes for s, u in uploads.items()},
                        aggregate_bytes=self.store.aggregate_path(row["round"]).stat().st_size,
                        aggregate_s=row["aggregate_s"] or 0.0, round_s=row["closed_at"] - row["opened_at"],
                    )
                )
            return Status(
                plan=self.plan(),
                joined={n: s for n, (s, _, _) in self._joined().items()},
                uploaded=list(self._sum.contributors) if self._sum and not self.finished else [],
                closed=closed,
            )

    def aggregate_path(self, round: int) -> Path:
        with self._lock:
            rows = {r["round"]: r for r in self.store.rounds()}
            if round not in rows:
                raise ApiError(404, "unknown_round", f"round {round} has not been opened")
            if rows[round]["closed_at"] is None:
                raise ApiError(425, "round_not_closed", f"round {round} is still open")
            return self.store.aggregate_path(round)

    # --- commands ------------------------------------------------------------------------

    def _known(self, silo: str) -> None:
        if silo not in self.config.silo_names:
            raise ApiError(403, "unknown_silo", f"silo {silo!r} is not part of federation {self.config.name!r}")

    def _joined_silo(self, silo: str) -> None:
        self._known(silo)
        if silo not in self._joined():
            raise ApiError(403, "not_joined", f"silo {silo!r} has not joined")

    def join(self, req: JoinRequest) -> RoundPlan:
        with self._lock:
            self._known(req.silo)
            joined = self._joined()
            vector = self._vector()
            if vector and (req.vector_size, req.layout) != vector:
                raise ApiError(
                    409, "layout_mismatch",
                    f"silo {req.silo!r} has an update vector of {req.vector_size} values ({req.layout}), "
                    f"the federation uses {vector[0]} ({vector[1]}): same model, LoRA and private modules are required",
                )
            if req.silo in joined:
                if joined[req.silo][0] != req.samples and self.current is not None:
                    raise ApiError(409, "already_joined", f"silo {req.silo!r} joined with {joined[req.silo][0]} samples")
            else:
                self.store.add_silo(req.silo, req.samples, req.vector_size, req.layout)
                log.info("silo %s joined (%d samples)", req.silo, req.samples)
            self._maybe_start()
            return self.plan()

    def withdraw(self, silo: str, reason: str) -> RoundPlan:
        """A silo stops contributing (e.g. its privacy budget is spent); rounds go on without it."""
        with self._lock:
            self._known(silo)
            if silo not in self.store.withdrawn():
                self.store.add_withdrawal(silo, self.current if self.current is not None else -1, reason)
                log.warning("silo %s withdrew: %s", silo, reason)
            self._maybe_close()
            self._publish()
            return self.plan()

    def accept_upload(self, round: int, silo: str, tmp_path: Path, metadata: UploadMetadata) -> UploadReceipt:
        """Validate an upload already streamed to ``tmp_path`` and take it, or refuse it changing nothing."""
        try:
            return self._accept(round, silo, tmp_path, metadata)
        finally:
            if tmp_path.exists():
                tmp_path.unlink()

    def _accept(self, round: int, silo: str, tmp_path: Path, metadata: UploadMetadata) -> UploadReceipt:
        with self._lock:
            self._joined_silo(silo)
            digest = sha256_file(tmp_path)
            size = tmp_path.stat().st_size
            previous = {u.silo: u for u in self.store.uploads(round)}.get(silo)
            if previous is not None:
                if previous.sha256 == digest:
                    return UploadReceipt(round=round, silo=silo, bytes=size, sha256=digest, duplicate=True)
                raise ApiError(409, "conflicting_upload", f"silo {silo!r} already uploaded different bytes for round {round}")
            if silo in self.store.withdrawn():
                raise ApiError(409, "withdrawn", f"silo {silo!r} has withdrawn from the federation")
            if self.finished:
                raise ApiError(409, "federation_finished", "the federation has finished all its rounds")
            if self.current is None:
                raise ApiError(409, "not_started", "round 0 has not opened: not every silo has joined")
            if round != self.current:
                reason = "round_closed" if round < self.current else "wrong_round"
                raise ApiError(409, reason, f"round {round} is not open; the open round is {self.current}")
            try:
                with EnvelopeReader.open(tmp_path) as reader:
                    head = reader.header
                    if head.silo != silo:
                        raise ApiError(400, "silo_mismatch", f"the envelope is from silo {head.silo!r}, uploaded as {silo!r}")
                    expected = self.weights()[silo]
                    if abs(head.weight - expected) > 1e-9:
                        raise ApiError(400, "wrong_weight", f"the envelope is weighted {head.weight}, the plan says {expected}")
                    self._sum.add(reader)
            except CryptoError as exc:
                raise ApiError(400, CRYPTO_ERROR_CODES.get(type(exc).__name__, "bad_envelope"), str(exc)) from None
            final = self.store.upload_path(round, silo)
            os.replace(tmp_path, final)
            crash_point("upload-stored")  # the file is there, the database does not know it yet
            self.store.add_upload(round, silo, digest, size, metadata.model_dump())
            log.info("round %d: accepted %s (%d bytes)", round, silo, size)
            self._maybe_close()
            self._publish()
            return UploadReceipt(round=round, silo=silo, bytes=size, sha256=digest, duplicate=False)

    # --- unlearning: a silo replaces the global adapter of a finished federation ------------

    def adapter_version(self) -> int:
        """How many global adapters were published: one per closed round and one per unlearning."""
        closed = sum(1 for r in self.store.rounds() if r["closed_at"] is not None)
        return closed + len(self.store.unlearnings())

    def unlearning_round(self, version: int) -> int:
        """The envelope round number of unlearning ``version`` (after every training round)."""
        return self.config.rounds + version

    def unlearnings(self) -> list[UnlearningRecord]:
        with self._lock:
            return [UnlearningRecord(version=r["version"], silo=r["silo"], adapter_version_before=r["adapter_before"],
                                     adapter_version_after=r["adapter_before"] + 1, sha256=r["sha256"], bytes=r["bytes"],
                                     received_at=r["received_at"], audit=UnlearningAudit(**r["audit"]))
                    for r in self.store.unlearnings()]

    def unlearning_path(self, version: int) -> Path:
        with self._lock:
            if version not in {r["version"] for r in self.store.unlearnings()}:
                raise ApiError(404, "unknown_unlearning", f"unlearning {version} has not been published")
            return self.store.unlearning_dir(version) / "aggregate.fshe"

    def accept_unlearning(self, version: int, silo: str, tmp_path: Path, audit: UnlearningAudit) -> UploadReceipt:
        """Take a silo's encrypted replacement of the global adapter and publish it, or refuse it changing nothing."""
        try:
            return self._accept_unlearning(version, silo, tmp_path, audit)
        finally:
            if tmp_path.exists():
                tmp_path.unlink()

    def _accept_unlearning(self, version: int, silo: str, tmp_path: Path, audit: UnlearningAudit) -> UploadReceipt:
        with self._lock:
            self._joined_silo(silo)
            digest, size = sha256_file(tmp_path), tmp_path.stat().st_size
            records = self.store.unlearnings()
            previous = next((r for r in records if r["version"] == version), None)
            if previous is not None:
                if (previous["silo"], previous["sha256"]) == (silo, digest):
                    return UploadReceipt(round=self.unlearning_round(version), silo=silo, bytes=size, sha256=digest, duplicate=True)
                raise ApiError(409, "conflicting_upload", f"unlearning {version} was already published by {previous['silo']!r}")
            if not self.finished:
                raise ApiError(409, "federation_running", "unlearning replaces the adapter of a finished federation; "
                                                          f"round {self.current} is still open")
            if version != len(records):
                raise ApiError(409, "wrong_version", f"the next unlearning is version {len(records)}, not {version}")
            vector_size, layout = self._vector()
            try:
                with EnvelopeReader.open(tmp_path) as reader:
                    head = reader.header
                    if head.silo != silo:
                        raise ApiError(400, "silo_mismatch", f"the envelope is from silo {head.silo!r}, uploaded as {silo!r}")
                    if abs(head.weight - 1.0) > 1e-9:
                        raise ApiError(400, "wrong_weight", f"a replacement is weighted 1, the envelope says {head.weight}")
                    published = EncryptedSum(self.keys, round=self.unlearning_round(version), count=vector_size,
                                             packing=head.packing, layout=layout)
                    published.add(reader)
            except CryptoError as exc:
                raise ApiError(400, CRYPTO_ERROR_CODES.get(type(exc).__name__, "bad_envelope"), str(exc)) from None
            folder = self.store.unlearning_dir(version)
            save_envelope(folder / "aggregate.fshe", published.to_bytes())
            os.replace(tmp_path, folder / f"{silo}.fshe")
            self.store.add_unlearning(version, silo, digest, size, self.adapter_version(), audit.model_dump())
            log.info("unlearning %d published for silo %s (%d users)", version, silo, audit.users_count)
            self._publish()
            return UploadReceipt(round=self.unlearning_round(version), silo=silo, bytes=size, sha256=digest, duplicate=False)

    def tick(self) -> None:
        """Close the open round if its deadline has passed (called periodically)."""
        with self._lock:
            self._maybe_close()

    def _maybe_close(self) -> None:
        if self.current is None or self.finished or self._sum is None:
            return
        if not set(self.config.silo_names) - set(self.store.withdrawn()):
            self.finished, self._sum = True, None  # nobody left to contribute
            log.warning("every silo has withdrawn: federation finished at round %d", self.current)
            return
        uploaded = len(self._sum.contributors)
        everyone = set(self._sum.contributors) >= set(self.config.silo_names) - set(self.store.withdrawn())
        late = time.time() >= (self._deadline() or float("inf")) and uploaded >= self.config.aggregation.min_silos
        if everyone or late:
            self._close()

    def _close(self) -> None:
        round = self.current
        start = time.perf_counter()
        save_envelope(self.store.aggregate_path(round), self._sum.to_bytes())
        elapsed = time.perf_counter() - start
        crash_point("aggregate-written")  # the aggregate is on disk, the round not yet closed
        self.store.close_round(round, list(self._sum.contributors), self._sum.weight_sum, elapsed)
        row = next(r for r in self.store.rounds() if r["round"] == round)
        telemetry.observe_close(row["closed_at"] - row["opened_at"], elapsed, self.store.aggregate_path(round).stat().st_size,
                                set(self._expected()) - set(self._sum.contributors))
        log.info("round %d closed with %s", round, ", ".join(self._sum.contributors))
        if round + 1 >= self.config.rounds:
            self.finished, self._sum = True, None
            log.info("federation finished")
            self._publish()
        else:
            self._open(round + 1)
