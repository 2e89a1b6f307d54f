"""Pure function: what the cluster and the aggregator report -> the CR's status."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..api.models import FederatedFinetuneSpec

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")


@dataclass(frozen=True)
class Observed:
    """What the operator saw this time: silo Jobs and their failed pods, and the aggregator's /v1/status."""

    jobs: dict[str, dict] = field(default_factory=dict)  # silo -> Job object (as returned by the API)
    failed_pods: dict[str, list[dict]] = field(default_factory=dict)  # silo -> failed Pod objects, oldest first
    aggregator: dict | None = None  # the aggregator's /v1/status body, or None when unreachable
    aggregator_ready: bool = False


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


def _last_termination(pods: list[dict]) -> tuple[int | None, str | None]:
    for pod in reversed(pods):
        for cs in pod.get("status", {}).get("containerStatuses", []) or []:
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
            if term:
                return term.get("exitCode"), term.get("reason") or pod.get("status", {}).get("reason")
        if pod.get("status", {}).get("reason"):
            return None, pod["status"]["reason"]
    return None, None


def _condition(previous: list[dict], type_: str, status: bool, reason: str, message: str, now: str, generation: int | None) -> dict:
    value = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == value else now
    return {"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": since,
            "observedGeneration": generation}


def _one_line(text: object, limit: int = 200) -> str:
    """A text from the aggregator as one printable line (it came from a silo: never trusted)."""
    return " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())[:limit]


def admitted_condition(previous: list[dict], admitted: bool, reason: str, message: str, now: str, generation: int | None) -> dict:
    """Admitted: every silo namespace consented and no child name is taken (False: the operator created nothing)."""
    return _condition(previous, "Admitted", admitted, reason, message, now, generation)


def compute_status(spec: FederatedFinetuneSpec, observed: Observed, previous: dict | None, now: str, generation: int | None,
                   endpoint: str | None = None) -> dict:
    """The full status object (camelCase), keeping condition transition times that did not change."""
    previous = previous or {}
    agg = observed.aggregator or {}
    closed = agg.get("closed", [])
    summary = agg.get("summary")  # an O(1) summary (newer aggregators); older ones list every closed round
    last_round = dict((summary or {}).get("last_round") or {})
    if summary is None:
        for closed_round in closed:
            for silo in closed_round.get("contributors", []):
                last_round[silo] = closed_round["round"]
    rounds_done = summary["rounds_closed"] if summary is not None else len(closed)
    withdrawn = agg.get("plan", {}).get("withdrawn", {}) or {}
    silos = []
    for silo in spec.silos:
        job = observed.jobs.get(silo.name)
        exit_code, reason = _last_termination(observed.failed_pods.get(silo.name, []))
        if silo.name in withdrawn:
            reason = f"Withdrawn: {_one_line(withdrawn[silo.name])}"
        entry = {"name": silo.name, "phase": silo_phase(job, spec.suspend), "lastRound": last_round.get(silo.name),
                 "exitCode": exit_code, "reason": reason, "restarts": (job or {}).get("status", {}).get("failed", 0) or 0}
        silos.append({k: v for k, v in entry.items() if v is not None})
    phases = [s["phase"] for s in silos]
    ready = sum(p in ("Running", "Succeeded") for p in phases)
    alive = sum(p != "Failed" for p in phases)
    finished = agg.get("plan", {}).get("state") == "finished"
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
    failed = [s for s in silos if s["phase"] == "Failed"]
    retrying = [s for s in silos if s["phase"] not in ("Failed", "Succeeded") and s["restarts"]]
    fairness = (summary or {}).get("fairness_gap")
    if summary is None and closed:
        aucs = [m.get("val_auc") for m in closed[-1].get("metadata", {}).values() if m.get("val_auc") is not None]
        fairness = round(max(aucs) - min(aucs), 4) if aucs else None
    prev_conditions = previous.get("conditions", [])
    failure_message = "; ".join(f"silo {s['name']} failed ({s.get('reason') or 'unknown'}, exit code {s.get('exitCode')})" for s in failed)
    conditions = [
        _condition(prev_conditions, "Ready", phase in ("Running", "Succeeded"), phase, f"{ready}/{len(silos)} silos ready", now, generation),
        _condition(prev_conditions, "Progressing", phase == "Running", "RoundsRunning" if phase == "Running" else phase,
                   f"{rounds_done}/{spec.rounds} rounds done", now, generation),
        _condition(prev_conditions, "Suspended", spec.suspend, "SpecSuspended" if spec.suspend else "NotSuspended", "", now, generation),
        _condition(prev_conditions, "Failed", phase == "Failed", "SilosFailed" if phase == "Failed" else "NoFailure",
                   failure_message if phase == "Failed" else "", now, generation),
        _condition(prev_conditions, "Degraded", bool(failed or retrying) and phase != "Failed",
                   "SiloFailed" if failed else ("SiloRetrying" if retrying else "AllSilosHealthy"),
                   "; ".join([failure_message] * bool(failed) + [
                       f"silo {s['name']} pod failed {s['restarts']}x ({s.get('reason') or 'unknown'}, exit code {s.get('exitCode')}), retrying"
                       for s in retrying]), now, generation),
        admitted_condition(prev_conditions, True, "Consented", "every silo namespace has a FederationMembership admitting its silo",
                           now, generation),
        _condition(prev_conditions, "Insecure", spec.aggregator.tls is None, "InsecureRequested" if spec.aggregator.tls is None else "MutualTLS",
                   "spec.insecure: plain HTTP; silo identities are not authenticated" if spec.aggregator.tls is None else "", now, generation),
    ]
    status = {
        "phase": phase, "round": rounds_done, "roundsTotal": spec.rounds, "silosReady": f"{ready}/{len(silos)}",
        "observedGeneration": generation, "conditions": conditions, "silos": silos,
        "aggregatorEndpoint": endpoint, "startTime": previous.get("startTime"),
        "completionTime": previous.get("completionTime"),
    }
    if fairness is not None:
        status["fairnessGap"] = fairness
    spent = [m.get("epsilon") for c in closed for m in c.get("metadata", {}).values() if m.get("epsilon") is not None]
    if summary is not None:
        spent = [summary["max_epsilon"]] if summary.get("max_epsilon") is not None else []
    if spent:
        status["epsilon"] = round(max(spent), 4)
    if phase == "Running" and not status["startTime"]:
        status["startTime"] = now
    if phase in ("Succeeded", "Failed") and not status["completionTime"]:
        status["completionTime"] = now
    return {k: v for k, v in status.items() if v is not None}
