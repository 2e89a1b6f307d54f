"""`FederatedUnlearning`: the Jobs that forget users at one silo, and the status that follows them.

Pure builders and a pure status function first, then the two I/O steps the kopf
handlers call (`step`, `cleanup`). Children live in silo namespaces, so, like a
FederatedFinetune's silo children, they carry labels naming the unlearning and are
deleted by the operator's finalizer (an ownerReference is added where the namespace is
the CR's own). Labels never name the federation: the finetune's status would count
them as its silo Jobs.

Order of events: refuse a spec or reference that cannot work (naming the field); wait
until the FederatedFinetune has Succeeded; run ONE unlearning Job at the silo (the
silo's training pod template, `fedshield unlearn` silo mode); once it succeeded and the
aggregator's ledger (`GET /v1/unlearning`) shows its record, run one "apply" Job per
other silo (the silo's training Job template unchanged: an agent restarted on its
state applies published unlearnings and exits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable, ClassVar

import httpx
from pydantic import ValidationError

from ..api.models import GROUP, VERSION, FederatedFinetuneSpec, SiloPlacement
from ..api.models import PLURAL as FINETUNE_PLURAL
from ..api.unlearning import KIND, FederatedUnlearningSpec
from ..api.membership import KIND as MEMBERSHIP_KIND
from . import consent
from .aggregator_http import get_json
from .kube import Kube
from .manifests import (
    CONFIG_DIR, KEYS_DIR, OWNER_UID_LABEL, SILO_JOB_BACKOFF_LIMIT, SILO_LABEL, STATE_DIR, Owner, aggregator_url, child_name, owned_by,
    silo_command, silo_credentials, silo_pod,
)
from ..spec import commands
from .status import _condition, _last_termination, silo_phase

UNLEARNING_LABEL, UNLEARNING_NS_LABEL = "fedshield.io/unlearning", "fedshield.io/unlearning-namespace"
FORGET_DIR, FORGET_FILE = "/etc/fedshield-forget", "users.txt"
TERMINAL = ("Succeeded", "Failed")
RECORD_FIELDS = {  # status field <- audit record path
    "unlearningVersion": ("version",), "adapterVersionBefore": ("adapter_version_before",),
    "adapterVersionAfter": ("adapter_version_after",), "usersCount": ("audit", "users_count"),
    "usersSha256": ("audit", "users_sha256"), "durationSeconds": ("audit", "seconds"),
    "forgetAucBefore": ("audit", "forget_auc_before"), "forgetAucAfter": ("audit", "forget_auc_after"),
    "testAucBefore": ("audit", "test_auc_before"), "testAucAfter": ("audit", "test_auc_after"),
}


class Refused(Exception):
    """A spec or a reference that cannot work; the message names the field."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Target(Owner):
    """The FederatedUnlearning the children belong to (from its metadata)."""

    kind: ClassVar[str] = KIND


# --- parsing and references (pure) ---------------------------------------------------------

def parse_spec(raw: dict) -> FederatedUnlearningSpec:
    """The spec, or Refused("InvalidSpec") naming every bad field as spec.<path>."""
    try:
        return FederatedUnlearningSpec.model_validate(dict(raw))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            path = ".".join(["spec", *(str(p) for p in error["loc"])])
            problems.append(f"{path}: {error['msg']}")
        raise Refused("InvalidSpec", "; ".join(problems)) from None


def check_reference(spec: FederatedUnlearningSpec, finetune: dict | None, namespace: str) -> FederatedFinetuneSpec:
    """The referenced finetune's spec, or Refused("InvalidReference") naming spec.finetune or spec.silo."""
    if finetune is None:
        raise Refused("InvalidReference", f'spec.finetune: FederatedFinetune "{spec.finetune}" not found in namespace "{namespace}"')
    try:
        ft_spec = FederatedFinetuneSpec.model_validate(dict(finetune.get("spec") or {}))
    except ValidationError:
        raise Refused("InvalidReference", f'spec.finetune: FederatedFinetune "{spec.finetune}" has an invalid spec') from None
    names = [s.name for s in ft_spec.silos]
    if spec.silo not in names:
        raise Refused("InvalidReference",
                      f'spec.silo: silo "{spec.silo}" is not in FederatedFinetune "{spec.finetune}" (silos: {", ".join(names)})')
    return ft_spec


def silo_of(ft_spec: FederatedFinetuneSpec, name: str) -> SiloPlacement:
    return next(s for s in ft_spec.silos if s.name == name)


# --- manifests (pure) ----------------------------------------------------------------------

def job_name(target: Target) -> str:
    return child_name(target, "unlearn")


def apply_job_name(target: Target, silo: str) -> str:
    return child_name(target, f"apply-{silo}")


def forget_configmap_name(target: Target) -> str:
    return child_name(target, "forget")


def labels(target: Target, component: str, silo: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "fedshield", "app.kubernetes.io/instance": target.name,
            "app.kubernetes.io/component": component, "app.kubernetes.io/managed-by": "fedshield-operator",
            UNLEARNING_LABEL: target.name, UNLEARNING_NS_LABEL: target.namespace, OWNER_UID_LABEL: target.uid, SILO_LABEL: silo}


def selector(target: Target) -> str:
    return f"{UNLEARNING_LABEL}={target.name},{UNLEARNING_NS_LABEL}={target.namespace}"


def _meta(target: Target, name: str, namespace: str, component: str, silo: str) -> dict:
    meta = {"name": name, "namespace": namespace, "labels": labels(target, component, silo)}
    if namespace == target.namespace:
        meta["ownerReferences"] = [target.reference()]
    return meta


def forget_configmap(target: Target, namespace: str, silo: str, users: list[str]) -> dict:
    """The inline user ids, one per line, for the unlearning pod to read."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(target, forget_configmap_name(target), namespace, "forget-list", silo),
            "data": {FORGET_FILE: "".join(f"{u}\n" for u in users)}}


def _forget_source(target: Target, spec: FederatedUnlearningSpec) -> tuple[str, dict | None]:
    """The --users-file path inside the pod, and the volume holding it (None: the state volume)."""
    forget = spec.forget
    if forget.path is not None:
        return f"{STATE_DIR}/{forget.path}", None
    name, key = (forget_configmap_name(target), FORGET_FILE) if forget.users else (forget.config_map.name, forget.config_map.key)
    return f"{FORGET_DIR}/{FORGET_FILE}", {"name": "forget", "configMap": {"name": name, "items": [{"key": key, "path": FORGET_FILE}]}}


def unlearn_command(finetune: Owner, silo: SiloPlacement, spec: FederatedUnlearningSpec, users_file: str) -> list[str]:
    return commands.unlearn_command(f"{CONFIG_DIR}/config.yaml", spec.silo, f"{KEYS_DIR}/secret.ckks", STATE_DIR,
                                    aggregator_url(finetune, tls=silo.tls is not None), spec, users_file=users_file,
                                    requested_by=spec.requested_by, reason=spec.reason, client=silo_credentials(silo))


def _job(target: Target, name: str, namespace: str, component: str, silo: str, pod: dict, backoff_limit: int) -> dict:
    job_spec = {"backoffLimit": backoff_limit, "suspend": False,
                "template": {"metadata": {"labels": labels(target, component, silo)}, "spec": pod}}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(target, name, namespace, component, silo), "spec": job_spec}


def unlearning_job(target: Target, finetune: Owner, ft_spec: FederatedFinetuneSpec, spec: FederatedUnlearningSpec) -> dict:
    """The one Job that forgets: the silo's training pod template with `fedshield unlearn` (silo mode).

    No retry after a failed attempt (it may have uploaded already); pod disruptions (preemption,
    node drain) do not count as failures.
    """
    silo = silo_of(ft_spec, spec.silo)
    users_file, volume = _forget_source(target, spec)
    pod = silo_pod(finetune, ft_spec, silo, unlearn_command(finetune, silo, spec, users_file))
    if volume is not None:
        pod["volumes"].append(volume)
        pod["containers"][0]["volumeMounts"].append({"name": "forget", "mountPath": FORGET_DIR, "readOnly": True})
    job = _job(target, job_name(target), silo.namespace, "unlearning", silo.name, pod, 0)
    job["spec"]["podFailurePolicy"] = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}
    return job


def apply_job(target: Target, finetune: Owner, ft_spec: FederatedFinetuneSpec, silo: SiloPlacement) -> dict:
    """A silo agent restarted on its state: it applies the published unlearning and exits (the training Job's pod)."""
    pod = silo_pod(finetune, ft_spec, silo, silo_command(finetune, silo))
    return _job(target, apply_job_name(target, silo.name), silo.namespace, "unlearning-apply", silo.name, pod, SILO_JOB_BACKOFF_LIMIT)


def unlearning_children(target: Target, finetune: Owner, ft_spec: FederatedFinetuneSpec, spec: FederatedUnlearningSpec) -> list[dict]:
    """What runs the unlearning at the silo: the forget-list ConfigMap (inline users only), then the Job."""
    silo = silo_of(ft_spec, spec.silo)
    out = [forget_configmap(target, silo.namespace, silo.name, spec.forget.users)] if spec.forget.users else []
    return out + [unlearning_job(target, finetune, ft_spec, spec)]


def apply_jobs(target: Target, finetune: Owner, ft_spec: FederatedFinetuneSpec, spec: FederatedUnlearningSpec) -> list[dict]:
    return [apply_job(target, finetune, ft_spec, s) for s in ft_spec.silos if s.name != spec.silo]


# --- status (pure) -------------------------------------------------------------------------

def pick_record(records: list[dict] | None, silo: str) -> dict | None:
    """The newest published unlearning of ``silo`` in the aggregator's ledger (`GET /v1/unlearning`)."""
    mine = [r for r in records or [] if r.get("silo") == silo]
    return max(mine, key=lambda r: r.get("version", -1)) if mine else None


def _from_record(record: dict) -> dict:
    out = {}
    for name, path in RECORD_FIELDS.items():
        value = record
        for key in path:
            value = (value or {}).get(key)
        if value is not None:
            out[name] = round(value, 4) if isinstance(value, float) else value
    return out


@dataclass(frozen=True)
class Observed:
    """What the operator saw this time."""

    finetune_phase: str = "Pending"
    job_created: bool = False  # the unlearning Job was created (status.jobName)
    job: dict | None = None  # the unlearning Job as read back, None when absent
    failed_pods: list[dict] = field(default_factory=list)  # its failed pods, oldest first
    record: dict | None = None  # its record in the aggregator's ledger, None when not (yet) read
    apply_jobs: dict[str, dict | None] | None = None  # silo -> apply Job (None: missing); None: not created yet


def compute_status(spec: FederatedUnlearningSpec, ft_spec: FederatedFinetuneSpec, target: Target, observed: Observed,
                   previous: dict | None, now: str, generation: int | None) -> dict:
    """The full status object (camelCase), keeping condition transition times that did not change."""
    previous = previous or {}
    silo = silo_of(ft_spec, spec.silo)
    status: dict = {k: previous[k] for k in (*RECORD_FIELDS, "startTime", "completionTime") if k in previous}
    if observed.record is not None:
        status.update(_from_record(observed.record))
    forgotten = "adapterVersionAfter" in status
    job_phase = silo_phase(observed.job, False) if observed.job is not None else None
    others = [s for s in ft_spec.silos if s.name != spec.silo]
    applies = [{"silo": s.name, "namespace": s.namespace, "jobName": apply_job_name(target, s.name),
                "phase": silo_phase((observed.apply_jobs or {}).get(s.name), False)} for s in others] if observed.apply_jobs is not None else []
    applied = (1 if forgotten else 0) + sum(a["phase"] == "Succeeded" for a in applies)
    failed_applies = [a for a in applies if a["phase"] == "Failed"]
    where = f"Job {silo.namespace}/{job_name(target)}"
    if not observed.job_created:
        phase, reason = "Pending", "WaitingForFinetune"
        message = f'waiting for FederatedFinetune "{spec.finetune}" to succeed (phase {observed.finetune_phase})'
    elif job_phase == "Failed" or (observed.job is None and not forgotten):
        code, why = _last_termination(observed.failed_pods)
        phase, reason = "Failed", "JobFailed"
        message = (f"unlearning {where} failed ({why or 'unknown'}, exit code {code})" if observed.job is not None
                   else f"unlearning {where} disappeared before it finished")
    elif not forgotten:
        phase, reason = "Running", "Forgetting"
        message = (f"unlearning {where} succeeded; waiting for its record in the aggregator's ledger" if job_phase == "Succeeded"
                   else f"forgetting at silo {silo.name} ({where}: {job_phase})")
    elif failed_applies:
        phase, reason = "Failed", "ApplyFailed"
        message = (f"published as adapter version {status['adapterVersionAfter']}, but silo(s) "
                   f"{', '.join(a['silo'] for a in failed_applies)} failed to apply it; a silo agent applies it whenever it next starts")
    elif observed.apply_jobs is not None and applied == len(ft_spec.silos):
        phase, reason = "Succeeded", "Applied"
        message = f"adapter version {status['adapterVersionBefore']} -> {status['adapterVersionAfter']}, applied at every silo"
    else:
        phase, reason = "Running", "Applying"
        message = f"published as adapter version {status['adapterVersionAfter']}; applied at {applied}/{len(ft_spec.silos)} silos"
    prev_conditions = previous.get("conditions", [])
    conditions = [
        _condition(prev_conditions, "Progressing", phase in ("Pending", "Running"), reason, message if phase not in TERMINAL else "",
                   now, generation),
        _condition(prev_conditions, "Forgotten", forgotten, "Published" if forgotten else "NotPublished",
                   f"adapter version {status.get('adapterVersionBefore')} -> {status.get('adapterVersionAfter')}" if forgotten else "",
                   now, generation),
        _condition(prev_conditions, "Applied", phase == "Succeeded", "AllSilos" if phase == "Succeeded" else "NotYet",
                   f"{applied}/{len(ft_spec.silos)} silos", now, generation),
        _condition(prev_conditions, "Failed", phase == "Failed", reason if phase == "Failed" else "NoFailure",
                   message if phase == "Failed" else "", now, generation),
    ]
    status.update({"phase": phase, "message": message, "observedGeneration": generation, "conditions": conditions,
                   "appliedSilos": f"{applied}/{len(ft_spec.silos)}", "applyJobs": applies})
    if observed.job_created:
        status.update({"jobName": job_name(target), "jobNamespace": silo.namespace})
        status.setdefault("startTime", now)
    if phase in TERMINAL:
        status.setdefault("completionTime", now)
    return status


# --- I/O: one reconcile step and the finalizer's cleanup -----------------------------------

RecordsFn = Callable[[str], Awaitable["list[dict] | None"]]


async def fetch_unlearning_records(url: str) -> list[dict] | None:
    """The aggregator's `GET /v1/unlearning` (its audit records), or None when it is not reachable."""
    return await get_json(f"{url}/v1/unlearning")


async def get_finetune(kube: Kube, namespace: str, name: str) -> dict | None:
    response = await kube._request("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{FINETUNE_PLURAL}/{name}")
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.json()


async def memberships(kube: Kube, namespaces: set[str]) -> dict[str, list[dict]]:
    """The FederationMemberships of each namespace (read-only; a namespace the operator may not read has none)."""
    out = {}
    for namespace in sorted(namespaces):
        try:
            out[namespace] = await kube.list(f"{GROUP}/{VERSION}", MEMBERSHIP_KIND, namespace)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code not in (403, 404):
                raise
            out[namespace] = []
    return out


async def _admit(kube: Kube, owner: Owner, ft_spec: FederatedFinetuneSpec, silos: list[SiloPlacement]) -> None:
    """Refused("ConsentMissing") unless each silo's namespace still admits the finetune's silo."""
    problems = consent.check((owner.namespace, owner.name), ft_spec, await memberships(kube, {s.namespace for s in silos}), silos)
    if problems:
        raise Refused("ConsentMissing", "; ".join(problems))


async def _apply_owned(kube: Kube, target: Target, children: list[dict]) -> None:
    """Create the children, or Refused("NameConflict") naming one that exists and is not this unlearning's (untouched)."""
    for child in children:
        live = await kube.get(child)
        if live is not None and not owned_by(live, target.uid):
            raise Refused("NameConflict", f"{child['kind']} {child['metadata']['namespace']}/{child['metadata']['name']} exists and is not "
                                          "owned by this FederatedUnlearning: left untouched")
    for child in children:
        if await kube.apply(child, target.uid) == "conflict":
            raise Refused("NameConflict", f"{child['kind']} {child['metadata']['namespace']}/{child['metadata']['name']} was taken meanwhile")


async def step(kube: Kube, records_of: RecordsFn, target: Target, raw_spec: dict, previous: dict, now: str,
               generation: int | None) -> dict:
    """Validate, create what is due, observe, and return the new status (raises Refused)."""
    if previous.get("phase") in TERMINAL:
        return previous
    spec = parse_spec(raw_spec)
    finetune = await get_finetune(kube, target.namespace, spec.finetune)
    ft_spec = check_reference(spec, finetune, target.namespace)
    owner = Owner(spec.finetune, target.namespace, finetune["metadata"].get("uid", ""))
    ft_phase = (finetune.get("status") or {}).get("phase", "Pending")
    created = bool(previous.get("jobName"))
    if not created and ft_phase == "Succeeded":
        await _admit(kube, owner, ft_spec, [silo_of(ft_spec, spec.silo)])
        await _apply_owned(kube, target, unlearning_children(target, owner, ft_spec, spec))
        created = True
    if not created:
        return compute_status(spec, ft_spec, target, Observed(finetune_phase=ft_phase), previous, now, generation)
    job = await kube.get(unlearning_job(target, owner, ft_spec, spec))
    namespace = silo_of(ft_spec, spec.silo).namespace
    pods = [p for p in await kube.list("v1", "Pod", namespace, selector(target))
            if p["metadata"].get("labels", {}).get(UNLEARNING_LABEL) == target.name
            and p["metadata"]["labels"].get("app.kubernetes.io/component") == "unlearning"
            and p.get("status", {}).get("phase") == "Failed"]
    record, live = None, None
    if job is not None and silo_phase(job, False) == "Succeeded" and "adapterVersionAfter" not in previous:
        record = pick_record(await records_of(aggregator_url(owner, tls=ft_spec.aggregator.tls is not None)), spec.silo)
    if record is not None or "adapterVersionAfter" in previous:  # published: every other silo applies it
        wanted = apply_jobs(target, owner, ft_spec, spec)
        if record is not None:  # first sight of the record: the apply Jobs are due now
            await _admit(kube, owner, ft_spec, [s for s in ft_spec.silos if s.name != spec.silo])
            await _apply_owned(kube, target, wanted)
        live = {child["metadata"]["labels"][SILO_LABEL]: await kube.get(child) for child in wanted}
    observed = Observed(finetune_phase=ft_phase, job_created=True, job=job, failed_pods=pods, record=record, apply_jobs=live)
    return compute_status(spec, ft_spec, target, observed, previous, now, generation)


async def cleanup(kube: Kube, target: Target, raw_spec: dict, status: dict) -> list[str]:
    """Delete the children in silo namespaces that this unlearning owns: those named in status, and those the
    finetune's silos would hold. Whatever status names is only a candidate: an object this unlearning did not create
    (its ownership label names another uid, or none) is left untouched. Returns the objects left alone."""
    doomed = []
    if status.get("jobName") and status.get("jobNamespace"):
        namespace = status["jobNamespace"]
        doomed += [{"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": status["jobName"], "namespace": namespace}},
                   {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": forget_configmap_name(target), "namespace": namespace}}]
    doomed += [{"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": a["jobName"], "namespace": a["namespace"]}}
               for a in status.get("applyJobs") or []]
    try:
        spec = parse_spec(raw_spec)
        finetune = await get_finetune(kube, target.namespace, spec.finetune)
        ft_spec = check_reference(spec, finetune, target.namespace)
        owner = Owner(spec.finetune, target.namespace, "")
        doomed += unlearning_children(target, owner, ft_spec, spec) + apply_jobs(target, owner, ft_spec, spec)
    except Refused:
        pass  # nothing beyond what status names was created
    seen, left = set(), []
    for obj in doomed:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key not in seen:
            seen.add(key)
            if await kube.delete(obj, target.uid) == "not-owned":
                left.append(f"{key[0]} {key[1]}/{key[2]}")
    return left
