"""The aggregator's round state machine, independent of HTTP.

Silos join (all configured silos, each once); round 0 opens; a round closes when
every silo still in the federation has uploaded, or when its deadline has passed with
at least ``min_silos`` uploads; its aggregate is written; the next round opens. An
aggregate never sums fewer than ``MIN_CONTRIBUTORS`` uploads: a round short of them at
its deadline stays open (it is *extended*) until enough silos upload, and a federation
left with fewer than two silos stops without publishing its open round. Closing a round
and opening the next commit in one transaction, after the next round's plan has been
computed: a plan that fails changes nothing. Every decision is persisted first (see
``store``), so a restarted aggregator resumes where it stopped, counting each accepted
upload exactly once.

Weights come from what the federation agreed (declared sample counts, or equal
weights), never from what a silo claims, and are capped per silo (``max_weight``).
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
from ..crypto.noise import check_noise_budget
from ..crypto.params import PackingParams
from ..faults import crash_point
from ..plan import Plan, compute_mix_weights, compute_plan, effective_samples
from ..updates import kept_count
from ..wire.errors import ErrorCode
from ..wire.messages import (
    EpsilonUnit,
    JoinRequest,
    RoundPlan,
    RoundSummary,
    Status,
    StatusSummary,
    UploadMetadata,
    UploadReceipt,
)
from ..wire.unlearning import PendingUnlearning, UnlearningAudit, UnlearningRecord
from . import telemetry
from .errors import ApiError, envelope_refused
from .store import Store, fsync_dir

log = logging.getLogger("fedshield.aggregator")
MIN_CONTRIBUTORS = 2  # an aggregate of one upload is that silo's update: never published
STATUS_PAGE = 20  # closed rounds /v1/status lists at most (older ones are paged with closed_from)
TEXT_LIMIT = 200


def sanitise(text: str, limit: int = TEXT_LIMIT) -> str:
    """One printable line: control characters (newlines included) become spaces; at most ``limit`` characters."""
    cleaned = "".join(c if c.isprintable() else " " for c in str(text))
    return " ".join(cleaned.split())[:limit]


def check_epsilon_unit(config: FederationConfig, metadata: UploadMetadata) -> None:
    """Refuse an epsilon without its unit, or in another unit than the federation's ``privacy.dp.unit``."""
    if metadata.epsilon is None:
        return
    expected = config.privacy.dp.unit
    if metadata.epsilon_unit != expected:
        got = metadata.epsilon_unit or "no unit"
        raise ApiError(ErrorCode.MALFORMED_REQUEST, f"epsilon_unit: the federation's epsilon is per {expected}, the upload says {got}")


def unlearning_packing(config: FederationConfig) -> PackingParams:
    """The packing every unlearning replacement of this run uses: from the spec, never from the uploader."""
    return config.unlearning_packing()


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
        config.check_keys(public_keys.params)  # privacy.encryption, when set, names the key set's parameters
        check_noise_budget(public_keys.params.scale_bits, config.packing().max_silos)  # before touching any state
        self.config, self.keys, self.store = config, public_keys, store
        self._lock = threading.RLock()
        self._sum: EncryptedSum | None = None
        self.current: int | None = None  # open round; None before round 0
        self.finished = False
        # The open round's plan, fixed when it opens (silos poll it several times a second).
        self._weights: dict[str, float] = {}
        self._lr_scales: dict[str, float] = {}
        self._mix_weights: dict[str, float] = {}  # personalise: each silo's warm-up weight, served to that silo only
        self._deadline_at: float | None = None
        self._extended_logged: int | None = None
        # What /v1/status summarises, kept up to date at each close (O(1) per request).
        self._losses: dict[str, float] = {}
        self._closed_count = 0
        self._last_round: dict[str, int] = {}
        self._max_epsilon: float | None = None
        self._epsilon_unit: EpsilonUnit | None = None
        self._epsilon: dict[str, float] = {}  # each silo's spend, by its last accepted upload
        self._fairness_gap: float | None = None
        self._restore()

    # --- state ---------------------------------------------------------------------------

    def _restore(self) -> None:
        self._quarantine_incoming()
        rounds = self.store.rounds()
        closed = [r for r in rounds if r["closed_at"] is not None]
        for row in closed:
            self._summarise_closed(row["round"], row["contributors"] or [])
        self._drop_old_uploads(closed[-1]["round"] if closed else None)
        if len(closed) >= self.config.rounds:
            self.finished = True
            if self._joined():
                self._fix_plan(opened_at=None)
            return
        open_rows = [r for r in rounds if r["closed_at"] is None]
        if open_rows:
            self.current = open_rows[0]["round"]
            self._fix_plan(open_rows[0]["opened_at"])
            self._sum = self._rebuild_sum(quarantine=True)
            log.info("resumed round %d with %d accepted uploads", self.current, len(self._sum.contributors))
            self._try_close()
        else:
            self._maybe_start()
        self._publish()

    def _quarantine(self, path: Path, why: str) -> None:
        """Move a torn or stale file aside (never fatal); an operator may inspect or delete it."""
        folder = self.store.root / "quarantine"
        folder.mkdir(exist_ok=True)
        target = folder / f"{int(time.time() * 1000)}-{path.parent.name}-{path.name}"
        os.replace(path, target)
        fsync_dir(folder)
        log.warning("quarantined %s (%s) as %s", path, why, target.name)

    def _quarantine_incoming(self) -> None:
        """Uploads a crash left half-received, and half-written aggregates, are moved aside at start."""
        incoming = self.store.root / "incoming"
        for path in sorted(incoming.glob("*")) if incoming.is_dir() else []:
            self._quarantine(path, "an upload interrupted by a restart")
        for path in sorted((self.store.root / "rounds").glob("*/*.tmp")):
            self._quarantine(path, "a half-written aggregate")

    def _rebuild_sum(self, quarantine: bool = False) -> EncryptedSum:
        """The open round's running sum, from the ledger's rows and their files (the ledger is the truth).

        With ``quarantine`` (at start), a row whose file is missing or torn is removed and its file moved
        aside: that silo's retry is then accepted again. Files without a row are moved aside too.
        """
        current = self._open_round()
        total = self._new_sum()
        rows = self.store.uploads(current)
        for row in rows:
            try:
                with EnvelopeReader.open(row.path) as reader:
                    probe = self._new_sum()
                    probe.add(reader)  # validate alone first: a torn file must not half-enter the sum
                with EnvelopeReader.open(row.path) as reader:
                    total.add(reader)
            except (CryptoError, OSError) as exc:
                if not quarantine:
                    raise
                if row.path.exists():
                    self._quarantine(row.path, f"unreadable upload: {exc}")
                self.store.remove_upload(current, row.silo)
                log.warning("round %d: the upload of %s was lost or torn; it will be accepted again", current, row.silo)
        if quarantine:
            known = {r.silo for r in self.store.uploads(current)}
            for path in sorted(self.store.round_dir(current).glob("*.fshe")):
                if path.stem not in known and path.name != "aggregate.fshe":
                    self._quarantine(path, "a file without a ledger row")
        return total

    def _joined(self) -> dict[str, tuple[int, int, str]]:
        return self.store.silos()

    def _open_round(self) -> int:
        """The open round's number; callers only run while one is open."""
        if self.current is None:
            raise RuntimeError("no round is open")
        return self.current

    def _open_sum(self) -> EncryptedSum:
        """The open round's running sum; callers only run while one is open."""
        if self._sum is None:
            raise RuntimeError("no round is open: there is no running sum")
        return self._sum

    def _round_row(self, round: int) -> dict:
        """The ledger row of a round known to be open or closed."""
        row = self.store.round_row(round)
        if row is None:
            raise RuntimeError(f"round {round} has no ledger row")
        return row

    def _joined_vector(self) -> tuple[int, str]:
        """The vector size and layout of the joined silos; callers only run once some silo has joined."""
        vector = self._vector()
        if vector is None:
            raise RuntimeError("no silo has joined: the update vector is not known yet")
        return vector

    def _vector(self) -> tuple[int, str] | None:
        joined = self._joined()
        if not joined:
            return None
        _, size, layout = next(iter(joined.values()))
        return size, layout

    def _new_sum(self, round: int | None = None) -> EncryptedSum:
        size, layout = self._joined_vector()
        return EncryptedSum(
            self.keys, round=self._open_round() if round is None else round, count=kept_count(size, self.config.privacy.pruning),
            packing=self.config.packing(), layout=layout,
        )

    def _maybe_start(self) -> None:
        """Open round 0 once every silo has joined (or, after an old aggregator's crash, the round after the last closed)."""
        if self.current is not None or self.finished:
            return
        round = self._closed_count
        if round == 0 and set(self._joined()) != set(self.config.silo_names):
            return
        plan = self._next_plan(round)  # computed first: if it fails, the round is not opened
        self.store.open_round(round)
        self.current = round
        self._weights, self._lr_scales, self._mix_weights = plan
        self._deadline_at = self._round_row(round)["opened_at"] + self.config.aggregation.round_deadline_seconds
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
        if self._closed_count:
            last = self._closed_count - 1
            row = self.store.round_row(last)
            reports = {u.silo: u.metadata for u in self.store.uploads(last)}
            telemetry.publish_reports(reports, expected, (row or {}).get("contributors") or [])
        telemetry.publish_unlearnings(self.store.unlearnings(), self._closed_count)

    def _next_plan(self, round: int, losses: dict[str, float] | None = None) -> Plan:
        """Round ``round``'s weights, learning-rate scales and warm-up weights from the closed rounds' ``losses``."""
        samples = effective_samples(self.config, {name: s for name, (s, _, _) in self._joined().items()})
        losses = self._losses if losses is None else losses
        return (*compute_plan(self.config, samples, losses), compute_mix_weights(self.config, losses, round))

    def _fix_plan(self, opened_at: float | None) -> None:
        """Weights, learning-rate scales and deadline of the round: they depend only on closed rounds."""
        self._weights, self._lr_scales, self._mix_weights = self._next_plan(self.current or 0)
        self._deadline_at = None if opened_at is None else opened_at + self.config.aggregation.round_deadline_seconds

    def _summarise_closed(self, round: int, contributors: list[str]) -> None:
        """Fold a closed round into the running summary (losses for the next plan, status numbers)."""
        reports = {u.silo: u.metadata for u in self.store.uploads(round)}
        for silo, meta in reports.items():
            if meta.get("val_loss") is not None:
                self._losses[silo] = meta["val_loss"]
            if meta.get("epsilon") is not None:
                self._epsilon[silo] = meta["epsilon"]
                if meta["epsilon"] >= (self._max_epsilon or 0.0):
                    self._max_epsilon, self._epsilon_unit = meta["epsilon"], meta.get("epsilon_unit")
        for silo in contributors:
            self._last_round[silo] = round
        scores = [m["val_score"] for m in reports.values() if m.get("val_score") is not None]
        self._fairness_gap = round_gap(scores)
        self._closed_count = round + 1

    def _drop_old_uploads(self, last_closed: int | None) -> None:
        """Delete the uploads of closed rounds past the retention (nothing reads them once the aggregate is durable)."""
        if last_closed is None:
            return
        keep = self.config.aggregation.upload_retention_rounds
        for folder in sorted((self.store.root / "rounds").glob("[0-9]*")):
            if folder.name.isdigit() and int(folder.name) <= last_closed - keep:
                removed = [p for p in folder.glob("*.fshe") if p.name != "aggregate.fshe"]
                for path in removed:
                    path.unlink(missing_ok=True)
                if removed:
                    fsync_dir(folder)

    def weights(self) -> dict[str, float]:
        """This round's aggregation weights: agreed sample shares, or dynamic balance by validation loss; capped."""
        return dict(self._weights)

    def lr_scales(self) -> dict[str, float]:
        return dict(self._lr_scales)

    def _deadline(self) -> float | None:
        return self._deadline_at if self.current is not None else None

    # --- queries -------------------------------------------------------------------------

    def plan(self, viewer: str | None = None) -> RoundPlan:
        """The current round's plan; ``viewer`` (the authenticated caller) also gets its own warm-up weight, never another's."""
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
                withdrawn={silo: sanitise(reason) for silo, reason in self.store.withdrawn().items()},
                deadline_s=max(0.0, deadline - time.time()) if deadline and state == "open" else None,
                mix_weight=self._mix_weights.get(viewer) if viewer is not None and state == "open" else None,
            )

    def status(self, viewer: str | None = None, everything: bool = True, closed_from: int | None = None,
               limit: int = STATUS_PAGE) -> Status:
        """The federation's progress: a summary (O(1) in rounds) and one page of closed rounds.

        ``everything`` (plain-HTTP test runs only) shows every silo's reports; otherwise a silo sees its own
        reports only and an observer (``viewer`` None) none, nor the sample counts.
        """
        with self._lock:
            count = self._closed_count
            start = max(0, count - limit) if closed_from is None else min(max(0, closed_from), count)
            rows = [r for r in self.store.rounds_page(start, min(limit, STATUS_PAGE)) if r["closed_at"] is not None]
            closed = []
            for row in rows:
                uploads = {u.silo: u for u in self.store.uploads(row["round"])}
                shown = {s: u for s, u in uploads.items() if everything or s == viewer}
                closed.append(
                    RoundSummary(
                        round=row["round"], contributors=row["contributors"], weight_sum=row["weight_sum"],
                        metadata={s: UploadMetadata(**u.metadata) for s, u in shown.items()},
                        upload_bytes={s: u.bytes for s, u in uploads.items()},
                        aggregate_bytes=self._aggregate_bytes(row["round"]),
                        aggregate_s=row["aggregate_s"] or 0.0, round_s=row["closed_at"] - row["opened_at"],
                    )
                )
            joined = self._joined()
            return Status(
                plan=self.plan(),
                joined={n: (s if everything or n == viewer else 0) for n, (s, _, _) in joined.items()},
                uploaded=list(self._sum.contributors) if self._sum and not self.finished else [],
                closed=closed,
                summary=StatusSummary(rounds_closed=count, last_round=dict(self._last_round),
                                      fairness_gap=self._fairness_gap, max_epsilon=self._max_epsilon,
                                      epsilon_unit=self._epsilon_unit, epsilon_by_silo=dict(self._epsilon),
                                      closed_from=start),
            )

    def _aggregate_bytes(self, round: int) -> int:
        path = self.store.aggregate_path(round)
        return path.stat().st_size if path.exists() else 0

    def aggregate_path(self, round: int, silo: str | None = None) -> Path:
        """A closed round's aggregate; a silo that did not contribute gets it only if at least 2 others did."""
        with self._lock:
            row = self.store.round_row(round)
            if row is None:
                raise ApiError(ErrorCode.UNKNOWN_ROUND, f"round {round} has not been opened")
            if row["closed_at"] is None:
                if self.finished:
                    raise ApiError(ErrorCode.FEDERATION_STOPPED, f"the federation stopped at round {round} with fewer than "
                                                              f"{MIN_CONTRIBUTORS} silos left: its aggregate is never published")
                raise ApiError(ErrorCode.ROUND_NOT_CLOSED, f"round {round} is still open",
                               retry_after_s=self.config.limits.aggregate_retry_after_s)
            others = [c for c in row["contributors"] or [] if c != silo]
            if len(others) < MIN_CONTRIBUTORS and (silo is None or silo not in (row["contributors"] or [])):
                raise ApiError(ErrorCode.TOO_FEW_CONTRIBUTORS, f"round {round} summed {len(row['contributors'] or [])} uploads: too few to publish to a non-contributor")
            return self.store.aggregate_path(round)

    # --- commands ------------------------------------------------------------------------

    def _known(self, silo: str) -> None:
        if silo not in self.config.silo_names:
            raise ApiError(ErrorCode.UNKNOWN_SILO, f"silo {silo!r} is not part of federation {self.config.name!r}")

    def check_known(self, silo: str) -> None:
        """ApiError unless ``silo`` is one of the federation's silos."""
        self._known(silo)

    def _joined_silo(self, silo: str) -> None:
        self._known(silo)
        if silo not in self._joined():
            raise ApiError(ErrorCode.NOT_JOINED, f"silo {silo!r} has not joined")

    def _check_samples(self, silo: str, samples: int, field: str) -> None:
        declared = (self.config.declared_samples or {}).get(silo)
        if declared is not None and samples > declared:
            raise ApiError(ErrorCode.SAMPLES_ABOVE_DECLARED, f"{field}: silo {silo!r} claims {samples} samples, the federation declared {declared}")

    def join(self, req: JoinRequest) -> RoundPlan:
        with self._lock:
            self._known(req.silo)
            self._check_samples(req.silo, req.samples, "samples")
            joined = self._joined()
            vector = self._vector()
            if vector and (req.vector_size, req.layout) != vector:
                raise ApiError(ErrorCode.LAYOUT_MISMATCH, f"silo {req.silo!r} has an update vector of {req.vector_size} values ({sanitise(req.layout)}), "
                    f"the federation uses {vector[0]} ({vector[1]}): same model, LoRA and private modules are required",
                )
            if req.silo in joined:
                if joined[req.silo][0] != req.samples and self.current is not None:
                    raise ApiError(ErrorCode.ALREADY_JOINED, f"silo {req.silo!r} joined with {joined[req.silo][0]} samples")
            else:
                self.store.add_silo(req.silo, req.samples, req.vector_size, req.layout)
                log.info("silo %s joined (%d samples)", req.silo, req.samples)
            try:
                self._maybe_start()
            except Exception:
                log.exception("opening round 0 failed; nothing changed, it is retried at the next join or tick")
            return self.plan(viewer=req.silo)

    def withdraw(self, silo: str, reason: str) -> RoundPlan:
        """A silo stops contributing (e.g. its privacy budget is spent); rounds go on without it."""
        with self._lock:
            self._known(silo)
            if silo not in self.store.withdrawn():
                reason = sanitise(reason)
                self.store.add_withdrawal(silo, self.current if self.current is not None else -1, reason)
                log.warning("silo %s withdrew: %s", silo, reason)
            self._try_close()
            self._publish()
            return self.plan(viewer=silo)

    def check_metadata(self, silo: str, metadata: UploadMetadata) -> None:
        """Refuse reports the plan could not use (samples above what was declared) or an epsilon not in the federation's unit."""
        self._check_samples(silo, metadata.samples, "samples")
        check_epsilon_unit(self.config, metadata)

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
            self.check_metadata(silo, metadata)
            digest = sha256_file(tmp_path)
            size = tmp_path.stat().st_size
            previous = {u.silo: u for u in self.store.uploads(round)}.get(silo)
            if previous is not None:
                if previous.sha256 == digest:
                    return UploadReceipt(round=round, silo=silo, bytes=size, sha256=digest, duplicate=True)
                raise ApiError(ErrorCode.CONFLICTING_UPLOAD, f"silo {silo!r} already uploaded different bytes for round {round}")
            if silo in self.store.withdrawn():
                raise ApiError(ErrorCode.WITHDRAWN, f"silo {silo!r} has withdrawn from the federation")
            if self.finished:
                raise ApiError(ErrorCode.FEDERATION_FINISHED, "the federation has finished all its rounds")
            if self.current is None:
                raise ApiError(ErrorCode.NOT_STARTED, "round 0 has not opened: not every silo has joined")
            if round != self.current:
                reason = ErrorCode.ROUND_CLOSED if round < self.current else ErrorCode.WRONG_ROUND
                raise ApiError(reason, f"round {round} is not open; the open round is {self.current}")
            try:
                with EnvelopeReader.open(tmp_path) as reader:
                    head = reader.header
                    if head.silo != silo:
                        raise ApiError(ErrorCode.SILO_MISMATCH, f"the envelope is from silo {head.silo!r}, uploaded as {silo!r}")
                    expected = self.weights()[silo]
                    if not abs(head.weight - expected) <= 1e-9:  # written so that NaN is refused too
                        raise ApiError(ErrorCode.WRONG_WEIGHT, f"the envelope is weighted {head.weight}, the plan says {expected}")
                    self._open_sum().add(reader)
            except CryptoError as exc:
                raise envelope_refused(exc) from None
            final = self.store.upload_path(round, silo)
            try:
                os.replace(tmp_path, final)
                fsync_dir(final.parent)
                crash_point("upload-stored")  # the file is there, the database does not know it yet
                self.store.add_upload(round, silo, digest, size, metadata.model_dump())
            except Exception as exc:
                # The sum already counts this upload; the ledger does not: make them agree again.
                log.exception("round %d: storing %s's upload failed; rebuilding the sum from the ledger", round, silo)
                if final.exists() and silo not in {u.silo for u in self.store.uploads(round)}:
                    final.unlink()
                self._sum = self._rebuild_sum()
                raise ApiError(ErrorCode.STORAGE_FAILED, f"the upload could not be stored ({type(exc).__name__}); retry it") from None
            log.info("round %d: accepted %s (%d bytes)", round, silo, size)
            self._try_close()
            self._publish()
            return UploadReceipt(round=round, silo=silo, bytes=size, sha256=digest, duplicate=False)

    # --- unlearning: a silo replaces the global adapter of a finished federation ------------

    def adapter_version(self) -> int:
        """How many global adapters were published: one per closed round and one per unlearning."""
        return self._closed_count + len(self.store.unlearnings())

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
                raise ApiError(ErrorCode.UNKNOWN_UNLEARNING, f"unlearning {version} has not been published")
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
            waiting = self.store.pending_unlearnings()
            previous = next((r for r in records + waiting if r["version"] == version), None)
            if previous is not None:
                if (previous["silo"], previous["sha256"]) == (silo, digest):
                    return UploadReceipt(round=self.unlearning_round(version), silo=silo, bytes=size, sha256=digest, duplicate=True,
                                         pending=previous in waiting)
                raise ApiError(ErrorCode.CONFLICTING_UPLOAD, f"unlearning {version} was already uploaded by {previous['silo']!r}")
            if not self.finished:
                raise ApiError(ErrorCode.FEDERATION_RUNNING, "unlearning replaces the adapter of a finished federation; "
                                                          f"round {self.current} is still open")
            if version != len(records):
                raise ApiError(ErrorCode.WRONG_VERSION, f"the next unlearning is version {len(records)}, not {version}")
            published = self._replacement(version, silo, tmp_path)
            audit = audit.model_copy(update={"requested_by": sanitise(audit.requested_by), "reason": sanitise(audit.reason, 500)})
            receipt = UploadReceipt(round=self.unlearning_round(version), silo=silo, bytes=size, sha256=digest, duplicate=False)
            if self.config.privacy.unlearning_approvals == 0:
                folder = self.store.unlearning_dir(version)
                save_envelope(folder / "aggregate.fshe", published.to_bytes())
                os.replace(tmp_path, folder / f"{silo}.fshe")
                fsync_dir(folder)
                self.store.add_unlearning(version, silo, digest, size, self.adapter_version(), audit.model_dump())
                log.info("unlearning %d published for silo %s (%d users)", version, silo, audit.users_count)
                self._publish()
                return receipt
            folder = self.store.pending_dir(version)
            os.replace(tmp_path, folder / f"{silo}.fshe")
            fsync_dir(folder)
            self.store.add_pending_unlearning(version, silo, digest, size, audit.model_dump())
            log.info("unlearning %d from silo %s waits for %d approvals", version, silo, self.config.privacy.unlearning_approvals)
            return receipt.model_copy(update={"pending": True})

    def _replacement(self, version: int, silo: str, path: Path) -> EncryptedSum:
        """Check a replacement envelope (silo, weight 1, the spec's packing, ciphertexts) and return it as a sum to publish."""
        vector_size, layout = self._joined_vector()
        packing = unlearning_packing(self.config)
        try:
            with EnvelopeReader.open(path) as reader:
                head = reader.header
                if head.silo != silo:
                    raise ApiError(ErrorCode.SILO_MISMATCH, f"the envelope is from silo {head.silo!r}, uploaded as {silo!r}")
                if not abs(head.weight - 1.0) <= 1e-9:
                    raise ApiError(ErrorCode.WRONG_WEIGHT, f"a replacement is weighted 1, the envelope says {head.weight}")
                if head.packing != packing:
                    raise ApiError(ErrorCode.WRONG_PACKING, f"packing: a replacement is packed as the run's spec says "
                                                         f"({packing.model_dump()}), the envelope says {head.packing.model_dump()}")
                published = EncryptedSum(self.keys, round=self.unlearning_round(version), count=vector_size,
                                         packing=packing, layout=layout)
                published.add(reader)
        except CryptoError as exc:
            raise envelope_refused(exc) from None
        return published

    def pending_unlearnings(self) -> list[PendingUnlearning]:
        with self._lock:
            return [PendingUnlearning(version=r["version"], silo=r["silo"], sha256=r["sha256"], bytes=r["bytes"],
                                      received_at=r["received_at"], audit=UnlearningAudit(**r["audit"]), approvals=r["approvals"],
                                      needed=self.config.privacy.unlearning_approvals)
                    for r in self.store.pending_unlearnings()]

    def approve_unlearning(self, version: int, approver: str, sha256: str) -> PendingUnlearning:
        """Another silo approves exactly these bytes; with enough approvals the unlearning is published."""
        with self._lock:
            self._joined_silo(approver)
            pending = next((r for r in self.store.pending_unlearnings() if r["version"] == version), None)
            if pending is None:
                done = next((r for r in self.store.unlearnings() if r["version"] == version), None)
                if done is not None and done["sha256"] == sha256:  # a repeated approval after publication
                    return PendingUnlearning(version=version, silo=done["silo"], sha256=done["sha256"], bytes=done["bytes"],
                                             received_at=done["received_at"], audit=UnlearningAudit(**done["audit"]), approvals=[],
                                             needed=self.config.privacy.unlearning_approvals, published=True)
                raise ApiError(ErrorCode.UNKNOWN_UNLEARNING, f"no unlearning {version} is waiting for approval")
            if approver == pending["silo"]:
                raise ApiError(ErrorCode.SELF_APPROVAL, f"silo {approver!r} uploaded unlearning {version}: another silo must approve it")
            if sha256 != pending["sha256"]:
                raise ApiError(ErrorCode.SHA256_MISMATCH, f"unlearning {version} has SHA-256 {pending['sha256']}, not {sha256}")
            self.store.approve_pending(version, approver)
            approvals = sorted(set(pending["approvals"]) | {approver})
            log.info("unlearning %d approved by %s (%d of %d)", version, approver, len(approvals),
                     self.config.privacy.unlearning_approvals)
            published = len(approvals) >= self.config.privacy.unlearning_approvals
            if published:
                source = self.store.pending_dir(version) / f"{pending['silo']}.fshe"
                total = self._replacement(version, pending["silo"], source)
                folder = self.store.unlearning_dir(version)
                save_envelope(folder / "aggregate.fshe", total.to_bytes())
                os.replace(source, folder / f"{pending['silo']}.fshe")
                fsync_dir(folder)
                self.store.publish_pending(version, self.adapter_version())
                log.info("unlearning %d published for silo %s after %d approvals", version, pending["silo"], len(approvals))
                self._publish()
            return PendingUnlearning(version=version, silo=pending["silo"], sha256=pending["sha256"], bytes=pending["bytes"],
                                     received_at=pending["received_at"], audit=UnlearningAudit(**pending["audit"]),
                                     approvals=approvals, needed=self.config.privacy.unlearning_approvals, published=published)

    def tick(self) -> None:
        """Close the open round if its deadline has passed (called periodically)."""
        with self._lock:
            if self.current is None and not self.finished:
                self._maybe_start()
            self._maybe_close()

    def _try_close(self) -> None:
        """Close the round if it is due; a failure changes nothing and is logged (the ticker retries)."""
        try:
            self._maybe_close()
        except Exception:
            log.exception("closing round %s failed; nothing changed, it is retried", self.current)

    def _maybe_close(self) -> None:
        if self.current is None or self.finished or self._sum is None:
            return
        remaining = set(self.config.silo_names) - set(self.store.withdrawn())
        if len(remaining) < MIN_CONTRIBUTORS:
            self.finished, self._sum = True, None
            log.warning("fewer than %d silos are left: the federation stops at round %d without publishing it",
                        MIN_CONTRIBUTORS, self.current)
            self._publish()
            return
        contributors = set(self._sum.contributors)
        everyone = contributors >= remaining and len(contributors) >= MIN_CONTRIBUTORS
        due = time.time() >= (self._deadline() or float("inf"))
        enough = len(contributors) >= max(MIN_CONTRIBUTORS, self.config.aggregation.min_silos)
        if everyone or (due and enough):
            self._close()
        elif due and self._extended_logged != self.current:
            self._extended_logged = self.current
            log.warning("round %d passed its deadline with %d of %d uploads needed: extended until enough silos upload",
                        self.current, len(contributors), max(MIN_CONTRIBUTORS, self.config.aggregation.min_silos))

    def _close(self) -> None:
        """Publish the open round and open the next one: the next plan first, then one transaction."""
        round = self._open_round()
        total = self._open_sum()
        last = round + 1 >= self.config.rounds
        reports = {u.silo: u.metadata for u in self.store.uploads(round)}
        losses = {**self._losses, **{s: m["val_loss"] for s, m in reports.items() if m.get("val_loss") is not None}}
        next_plan = None if last else self._next_plan(round + 1, losses)  # may raise: nothing has changed yet
        start = time.perf_counter()
        save_envelope(self.store.aggregate_path(round), total.to_bytes())
        fsync_dir(self.store.aggregate_path(round).parent)
        elapsed = time.perf_counter() - start
        crash_point("aggregate-written")  # the aggregate is on disk, the round not yet closed
        contributors = list(total.contributors)
        self.store.close_round(round, contributors, total.weight_sum, elapsed, open_next=not last)
        # Committed: from here only in-memory bookkeeping, which cannot fail halfway.
        self._summarise_closed(round, contributors)
        row = self._round_row(round)
        telemetry.observe_close(row["closed_at"] - row["opened_at"], elapsed, self.store.aggregate_path(round).stat().st_size,
                                set(self._expected()) - set(contributors))
        log.info("round %d closed with %s", round, ", ".join(contributors))
        if last:
            self.finished, self._sum = True, None
            log.info("federation finished")
        else:
            self.current = round + 1
            assert next_plan is not None  # computed above for every round but the last
            self._weights, self._lr_scales, self._mix_weights = next_plan
            self._deadline_at = self._round_row(round + 1)["opened_at"] + self.config.aggregation.round_deadline_seconds
            self._sum = self._new_sum()
            log.info("round %d open", self.current)
        try:
            self._drop_old_uploads(round)
        except OSError:
            log.exception("deleting the uploads of round %d failed (retried at the next close or start)", round)
        self._publish()


def round_gap(scores: list[float]) -> float | None:
    """Max minus min validation score of one round (None without reports)."""
    return round(max(scores) - min(scores), 4) if scores else None
