"""Pure function: what the cluster and the aggregator report -> the CR's status (an ``api`` status model).

The aggregator's answer arrives parsed (``wire.messages.Status``); the status is built as
``FederatedFinetuneStatus`` and turned into the camelCase body kopf patches by :func:`status_body`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from ..api.models import Condition, FederatedFinetuneSpec, FederatedFinetuneStatus, SiloStatus
from ..wire.messages import Status, StatusSummary

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")


@dataclass(frozen=True)
class Observed:
    """What the operator saw this time: silo Jobs and their failed pods, and the aggregator's /v1/status."""

    jobs: dict[str, dict] = field(default_factory=dict)  # silo -> Job object (as returned by the API)
    failed_pods: dict[str, list[dict]] = field(default_factory=dict)  # silo -> failed Pod objects, oldest first
    aggregator: Status | None = None  # the aggregator's /v1/status, or None when unreachable
    aggregator_ready: bool = False
    jobsets: dict[str, dict] = field(default_factory=dict)  # multi-node silo -> its JobSet (or TrainJob: multiNode trainjob)
    ready_pods: dict[str, int] = field(default_factory=dict)  # multi-node silo -> its pods (ranks) running and ready


def status_body(status: BaseModel) -> dict:
    """The camelCase status body kopf patches (fields without a value left out)."""
    return status.model_dump(by_alias=True, exclude_none=True)


def _job_condition(job: dict, kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in job.get("status", {}).get("conditions", []) or [])


def silo_phase(job: dict | None, suspended: bool) -> str:
    if job is None:
        return "Pending"
    if _job_condition(job, "Complete") or job.get("status", {}).get("succeeded", 0) >= 1:
        return "Succeeded"
    if _job_condition(job, "Failed"):
        return "Failed"
    if suspended or _job_condition(job, "Suspended"):
        return "Suspended"
    if job.get("status", {}).get("active", 0) >= 1:
        return "Running"
    return "Pending"


def pod_ready(pod: dict) -> bool:
    """A pod running with its Ready condition True, and not being deleted (a rank of a group JobSet is restarting stays
    Running and Ready until its containers stop)."""
    st = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return st.get("phase") == "Running" and any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])


def jobset_phase(jobset: dict | None, suspended: bool) -> str:
    """A multi-node silo's phase from its JobSet's conditions and ``replicatedJobsStatus`` (JobSet v1alpha2)."""
    if jobset is None:
        return "Pending"
    st = jobset.get("status") or {}
    if _job_condition(jobset, "Completed") or st.get("terminalState") == "Completed":
        return "Succeeded"
    if _job_condition(jobset, "Failed") or st.get("terminalState") == "Failed":
        return "Failed"
    if suspended or _job_condition(jobset, "Suspended"):
        return "Suspended"
    if any((r.get("active") or 0) >= 1 or (r.get("ready") or 0) >= 1 for r in st.get("replicatedJobsStatus") or []):
        return "Running"
    return "Pending"


def trainjob_phase(train_job: dict | None, suspended: bool) -> str:
    """A multi-node silo's phase from its TrainJob (Trainer v2.3.0): ``Complete`` / ``Failed`` / ``Suspended`` conditions
    (copied from its JobSet's), else Running once ``jobsStatus`` has an active or ready Job."""
    if train_job is None:
        return "Pending"
    if _job_condition(train_job, "Complete"):
        return "Succeeded"
    if _job_condition(train_job, "Failed"):
        return "Failed"
    if suspended or _job_condition(train_job, "Suspended"):
        return "Suspended"
    if any((j.get("active") or 0) >= 1 or (j.get("ready") or 0) >= 1 for j in (train_job.get("status") or {}).get("jobsStatus") or []):
        return "Running"
    return "Pending"


def _failed_condition(obj: dict) -> tuple[str | None, str | None]:
    """The reason and message of an object's ``Failed`` condition that is True."""
    found: dict = next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Failed" and c.get("status") == "True"), {})
    return found.get("reason"), found.get("message")


def last_termination(pods: list[dict]) -> tuple[int | None, str | None]:
    for pod in reversed(pods):
        for cs in pod.get("status", {}).get("containerStatuses", []) or []:
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
            if term:
                return term.get("exitCode"), term.get("reason") or pod.get("status", {}).get("reason")
        if pod.get("status", {}).get("reason"):
            return None, pod["status"]["reason"]
    return None, None


def condition(previous: list[dict], type_: str, status: bool, reason: str, message: str, now: str,
              generation: int | None) -> Condition:
    """A standard condition, keeping the transition time of the previous one of its type when its status did not change."""
    value = "True" if status else "False"
    old = next((c for c in previous if isinstance(c, dict) and c.get("type") == type_), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == value else None
    return Condition(type=type_, status=value, reason=reason, message=message,
                     last_transition_time=since if isinstance(since, str) and since else now,
                     observed_generation=generation)


def _one_line(text: object, limit: int = 200) -> str:
    """A text from the aggregator as one printable line (it came from a silo: never trusted)."""
    return " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())[:limit]


def admitted_condition(previous: list[dict], admitted: bool, reason: str, message: str, now: str,
                       generation: int | None) -> Condition:
    """Admitted: every silo namespace consented and no child name is taken (False: the operator created nothing)."""
    return condition(previous, "Admitted", admitted, reason, message, now, generation)




def _silo(spec_silo: str, observed: Observed, suspended: bool, summary: StatusSummary | None, withdrawn: dict[str, str],
          nodes: int = 1) -> SiloStatus:
    job = observed.jobs.get(spec_silo)
    last_round = summary.last_round if summary is not None else {}
    spent = summary.epsilon_by_silo.get(spec_silo) if summary is not None else None
    epsilon = round(spent, 4) if spent is not None else None
    exit_code, reason = last_termination(observed.failed_pods.get(spec_silo, []))
    if spec_silo in withdrawn:
        reason = f"Withdrawn: {_one_line(withdrawn[spec_silo])}"
    if nodes > 1:
        js = observed.jobsets.get(spec_silo)
        ready = min(nodes, observed.ready_pods.get(spec_silo, 0))  # pods: a TrainJob's jobsStatus counts Jobs (one), not ranks
        if js is not None and js.get("kind") == "TrainJob":  # no restart count in a TrainJob's status: left out
            phase = trainjob_phase(js, suspended)
            if phase == "Failed" and reason is None:
                failed_reason, message = _failed_condition(js)
                reason = _one_line(f"{failed_reason or 'Failed'}: {message}" if message else failed_reason or "Failed")
            return SiloStatus(name=spec_silo, phase=phase, last_round=last_round.get(spec_silo), exit_code=exit_code, reason=reason,
                              restarts=None, ranks_ready=f"{ready}/{nodes}", epsilon=epsilon)
        return SiloStatus(name=spec_silo, phase=jobset_phase(js, suspended), last_round=last_round.get(spec_silo), exit_code=exit_code,
                          reason=reason, restarts=((js or {}).get("status") or {}).get("restarts", 0) or 0, ranks_ready=f"{ready}/{nodes}",
                          epsilon=epsilon)
    return SiloStatus(name=spec_silo, phase=silo_phase(job, suspended), last_round=last_round.get(spec_silo), exit_code=exit_code,
                      reason=reason, restarts=(job or {}).get("status", {}).get("failed", 0) or 0, epsilon=epsilon)


def finetune_status(spec: FederatedFinetuneSpec, observed: Observed, previous: dict | None, now: str, generation: int | None,
                    endpoint: str | None = None) -> FederatedFinetuneStatus:
    """The full status, keeping condition transition times (and start/completion times) that did not change."""
    previous = previous or {}
    agg = observed.aggregator
    summary = agg.summary if agg is not None else None
    withdrawn = agg.plan.withdrawn if agg is not None else {}
    rounds_done = summary.rounds_closed if summary is not None else 0
    silos = [_silo(silo.name, observed, spec.suspend, summary, withdrawn, silo.nodes) for silo in spec.silos]
    phases = [s.phase for s in silos]
    ready = sum(p in ("Running", "Succeeded") for p in phases)
    alive = sum(p != "Failed" for p in phases)
    finished = agg is not None and agg.plan.state == "finished"
    if spec.suspend:
        phase = "Suspended"
    elif alive < spec.aggregation.min_silos:
        phase = "Failed"
    elif finished and all(p == "Succeeded" for p in phases if p != "Failed"):
        phase = "Succeeded"
    elif "Running" in phases and (observed.aggregator_ready or previous.get("phase") == "Running"):
        phase = "Running"  # an aggregator briefly unreachable does not demote a running federation
    else:
        phase = "Pending"
    failed = [s for s in silos if s.phase == "Failed"]
    retrying = [s for s in silos if s.phase not in ("Failed", "Succeeded") and s.restarts]
    prev = [c for c in previous.get("conditions", []) or [] if isinstance(c, dict)]
    failure_message = "; ".join(f"silo {s.name} failed ({s.reason or 'unknown'}, exit code {s.exit_code})" for s in failed)
    insecure = spec.aggregator.tls is None
    conditions = [
        condition(prev, "Ready", phase in ("Running", "Succeeded"), phase, f"{ready}/{len(silos)} silos ready", now, generation),
        condition(prev, "Progressing", phase == "Running", "RoundsRunning" if phase == "Running" else phase,
                  f"{rounds_done}/{spec.rounds} rounds done", now, generation),
        condition(prev, "Suspended", spec.suspend, "SpecSuspended" if spec.suspend else "NotSuspended", "", now, generation),
        condition(prev, "Failed", phase == "Failed", "SilosFailed" if phase == "Failed" else "NoFailure",
                  failure_message if phase == "Failed" else "", now, generation),
        condition(prev, "Degraded", bool(failed or retrying) and phase != "Failed",
                  "SiloFailed" if failed else ("SiloRetrying" if retrying else "AllSilosHealthy"),
                  "; ".join([failure_message] * bool(failed) + [
                      f"silo {s.name} pod failed {s.restarts}x ({s.reason or 'unknown'}, exit code {s.exit_code}), retrying"
                      for s in retrying]), now, generation),
        admitted_condition(prev, True, "Consented", "every silo namespace has a FederationMembership admitting its silo", now, generation),
        condition(prev, "Insecure", insecure, "InsecureRequested" if insecure else "MutualTLS",
                  "spec.insecure: plain HTTP; silo identities are not authenticated" if insecure else "", now, generation),
    ]
    start, completion = (t if isinstance(t, str) else None for t in (previous.get("startTime"), previous.get("completionTime")))
    if phase == "Running" and not start:
        start = now
    if phase in ("Succeeded", "Failed") and not completion:
        completion = now
    epsilon = summary.max_epsilon if summary is not None else None
    return FederatedFinetuneStatus(
        phase=phase, round=rounds_done, rounds_total=spec.rounds, silos_ready=f"{ready}/{len(silos)}", observed_generation=generation,
        conditions=conditions, silos=silos, aggregator_endpoint=endpoint, start_time=start, completion_time=completion,
        fairness_gap=summary.fairness_gap if summary is not None else None,
        epsilon=round(epsilon, 4) if epsilon is not None else None,
        epsilon_unit=summary.epsilon_unit if summary is not None and epsilon is not None else None,
    )


def compute_status(spec: FederatedFinetuneSpec, observed: Observed, previous: dict | None, now: str, generation: int | None,
                   endpoint: str | None = None) -> dict:
    """The status body kopf patches: :func:`finetune_status` in camelCase."""
    return status_body(finetune_status(spec, observed, previous, now, generation, endpoint))
