"""A `FederatedUnlearning`'s status from what the operator saw (pure), built as ``FederatedUnlearningStatus``."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError

from ..api.models import FederatedFinetuneSpec
from ..api.unlearning import ApplyJobStatus, FederatedUnlearningSpec, FederatedUnlearningStatus
from ..wire.unlearning import PendingUnlearning, UnlearningRecord
from .status import condition, last_termination, silo_phase, status_body
from .unlearning_manifests import apply_job_name, job_name
from .unlearning_refs import TERMINAL, Target, silo_of

APPROVAL_FIELDS = ("uploadSha256", "approvals", "approvalsNeeded")  # status fields read from a pending upload
RECORD_FIELDS = ("unlearningVersion", "adapterVersionBefore", "adapterVersionAfter", "usersCount", "usersSha256", "durationSeconds",
                 "forgetAucBefore", "forgetAucAfter", "testAucBefore", "testAucAfter")  # status fields read from the audit record


def pick_record(records: list[UnlearningRecord] | None, silo: str) -> UnlearningRecord | None:
    """The newest published unlearning of ``silo`` in the aggregator's ledger (`GET /v1/unlearning`)."""
    mine = [r for r in records or [] if r.silo == silo]
    return max(mine, key=lambda r: r.version) if mine else None


def pick_pending(pending: list[PendingUnlearning] | None, silo: str) -> PendingUnlearning | None:
    """The newest upload of ``silo`` waiting for approval (`GET /v1/unlearning/pending`)."""
    mine = [p for p in pending or [] if p.silo == silo]
    return max(mine, key=lambda p: p.version) if mine else None


def _four(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


def from_record(record: UnlearningRecord) -> dict:
    """The status fields an audit record fills (camelCase, those with a value)."""
    audit = record.audit
    fields = FederatedUnlearningStatus(
        unlearning_version=record.version, adapter_version_before=record.adapter_version_before,
        adapter_version_after=record.adapter_version_after, users_count=audit.users_count, users_sha256=audit.users_sha256,
        duration_seconds=_four(audit.seconds), forget_auc_before=_four(audit.forget_auc_before),
        forget_auc_after=_four(audit.forget_auc_after), test_auc_before=_four(audit.test_auc_before),
        test_auc_after=_four(audit.test_auc_after))
    return {k: v for k, v in status_body(fields).items() if k in RECORD_FIELDS}


def _kept(previous: dict) -> dict:
    """What earlier ticks wrote and this one keeps: the record's fields and the start and completion times (valid ones only)."""
    out = {}
    for key in (*RECORD_FIELDS, *APPROVAL_FIELDS, "startTime", "completionTime"):
        if key in previous:
            try:
                FederatedUnlearningStatus.model_validate({key: previous[key]})
            except ValidationError:
                continue
            out[key] = previous[key]
    return out


@dataclass(frozen=True)
class Observed:
    """What the operator saw this time."""

    finetune_phase: str = "Pending"
    job_created: bool = False  # the unlearning Job was created (status.jobName)
    job: dict | None = None  # the unlearning Job as read back, None when absent
    failed_pods: list[dict] = field(default_factory=list)  # its failed pods, oldest first
    record: UnlearningRecord | None = None  # its record in the aggregator's ledger, None when not (yet) read
    apply_jobs: dict[str, dict | None] | None = None  # silo -> apply Job (None: missing); None: not created yet
    pending: PendingUnlearning | None = None  # its upload waiting for other silos' approval, None when none (or not read)


def unlearning_status(spec: FederatedUnlearningSpec, ft_spec: FederatedFinetuneSpec, target: Target, observed: Observed,
                      previous: dict | None, now: str, generation: int | None) -> FederatedUnlearningStatus:
    """The full status, keeping what earlier ticks read (the record's fields, start time) and unchanged transition times."""
    previous = previous or {}
    silo = silo_of(ft_spec, spec.silo)
    kept = _kept(previous)
    if observed.pending is not None:
        kept.update(uploadSha256=observed.pending.sha256, approvals=len(observed.pending.approvals),
                    approvalsNeeded=observed.pending.needed, unlearningVersion=observed.pending.version)
    if observed.record is not None:
        kept.update(from_record(observed.record), uploadSha256=observed.record.sha256)
    forgotten = "adapterVersionAfter" in kept
    job_phase = silo_phase(observed.job, False) if observed.job is not None else None
    others = [s for s in ft_spec.silos if s.name != spec.silo]
    applies = [ApplyJobStatus(silo=s.name, namespace=s.namespace, job_name=apply_job_name(target, s.name),
                              phase=silo_phase((observed.apply_jobs or {}).get(s.name), False))
               for s in others] if observed.apply_jobs is not None else []
    applied = (1 if forgotten else 0) + sum(a.phase == "Succeeded" for a in applies)
    failed_applies = [a for a in applies if a.phase == "Failed"]
    where = f"Job {silo.namespace}/{job_name(target)}"
    if not observed.job_created:
        phase, reason = "Pending", "WaitingForFinetune"
        message = f'waiting for FederatedFinetune "{spec.finetune}" to succeed (phase {observed.finetune_phase})'
    elif job_phase == "Failed" or (observed.job is None and not forgotten):
        code, why = last_termination(observed.failed_pods)
        phase, reason = "Failed", "JobFailed"
        message = (f"unlearning {where} failed ({why or 'unknown'}, exit code {code})" if observed.job is not None
                   else f"unlearning {where} disappeared before it finished")
    elif not forgotten and observed.pending is not None:
        pending = observed.pending
        phase, reason = "WaitingForApproval", "WaitingForApproval"
        message = (f"unlearning {pending.version} uploaded by silo {silo.name} waits for approval: {len(pending.approvals)}/"
                   f"{pending.needed} other silos approved; each runs `fedshield approve --silo <its name> --version "
                   f"{pending.version} --sha256 {pending.sha256}` against the aggregator")
    elif not forgotten:
        phase, reason = "Running", "Forgetting"
        message = (f"unlearning {where} succeeded; waiting for its record in the aggregator's ledger" if job_phase == "Succeeded"
                   else f"forgetting at silo {silo.name} ({where}: {job_phase})")
    elif failed_applies:
        phase, reason = "Failed", "ApplyFailed"
        message = (f"published as adapter version {kept['adapterVersionAfter']}, but silo(s) "
                   f"{', '.join(a.silo for a in failed_applies)} failed to apply it; a silo agent applies it whenever it next starts")
    elif observed.apply_jobs is not None and applied == len(ft_spec.silos):
        phase, reason = "Succeeded", "Applied"
        message = f"adapter version {kept['adapterVersionBefore']} -> {kept['adapterVersionAfter']}, applied at every silo"
    else:
        phase, reason = "Running", "Applying"
        message = f"published as adapter version {kept['adapterVersionAfter']}; applied at {applied}/{len(ft_spec.silos)} silos"
    prev = [c for c in previous.get("conditions", []) or [] if isinstance(c, dict)]
    conditions = [
        condition(prev, "Progressing", phase in ("Pending", "Running", "WaitingForApproval"), reason, message if phase not in TERMINAL else "", now, generation),
        condition(prev, "Forgotten", forgotten, "Published" if forgotten else "NotPublished",
                  f"adapter version {kept.get('adapterVersionBefore')} -> {kept.get('adapterVersionAfter')}" if forgotten else "",
                  now, generation),
        condition(prev, "Applied", phase == "Succeeded", "AllSilos" if phase == "Succeeded" else "NotYet",
                  f"{applied}/{len(ft_spec.silos)} silos", now, generation),
        condition(prev, "Failed", phase == "Failed", reason if phase == "Failed" else "NoFailure",
                  message if phase == "Failed" else "", now, generation),
    ]
    extra: dict = {}
    if observed.job_created:
        extra.update(jobName=job_name(target), jobNamespace=silo.namespace)
        kept.setdefault("startTime", now)
    if phase in TERMINAL:
        kept.setdefault("completionTime", now)
    return FederatedUnlearningStatus.model_validate({
        **kept, **extra, "phase": phase, "message": message, "observedGeneration": generation, "conditions": conditions,
        "appliedSilos": f"{applied}/{len(ft_spec.silos)}", "applyJobs": applies})


def compute_status(spec: FederatedUnlearningSpec, ft_spec: FederatedFinetuneSpec, target: Target, observed: Observed,
                   previous: dict | None, now: str, generation: int | None) -> dict:
    """The status body kopf patches: :func:`unlearning_status` in camelCase."""
    return status_body(unlearning_status(spec, ft_spec, target, observed, previous, now, generation))
