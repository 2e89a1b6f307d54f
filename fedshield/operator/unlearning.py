"""`FederatedUnlearning`: the two I/O steps the kopf handlers call (`step`, `cleanup`), over the pure parts.

The pure parts each have their module: ``unlearning_refs`` (the spec and the finetune it names),
``unlearning_manifests`` (the children) and ``unlearning_status`` (the status); their public names
are importable from here too.

Order of events: refuse a spec or reference that cannot work (naming the field); wait
until the FederatedFinetune has Succeeded; run ONE unlearning Job at the silo (the
silo's training pod template, `fedshield unlearn` silo mode); once it succeeded and the
aggregator's ledger (`GET /v1/unlearning`) shows its record, run one "apply" Job per
other silo (the silo's training Job template unchanged: an agent restarted on its
state applies published unlearnings and exits).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from ..api.membership import KIND as MEMBERSHIP_KIND
from ..api.models import GROUP, VERSION, FederatedFinetuneSpec, SiloPlacement
from ..api.models import PLURAL as FINETUNE_PLURAL
from ..wire.unlearning import PendingUnlearning, UnlearningRecord
from . import consent
from .aggregator_http import fetch_pending_unlearnings, fetch_unlearning_records
from .kube import Kube, get_custom_object
from .manifests import SILO_LABEL, Owner, aggregator_url, owned_by
from .status import silo_phase
from .unlearning_manifests import (
    FORGET_DIR,
    FORGET_FILE,
    UNLEARNING_LABEL,
    UNLEARNING_NS_LABEL,
    apply_job,
    apply_job_name,
    apply_jobs,
    forget_configmap,
    forget_configmap_name,
    job_name,
    labels,
    selector,
    unlearn_command,
    unlearning_children,
    unlearning_job,
)
from .unlearning_refs import TERMINAL, Refused, Target, check_reference, parse_spec, silo_of
from .unlearning_status import RECORD_FIELDS, Observed, compute_status, pick_pending, pick_record, unlearning_status

__all__ = [  # the pure parts, importable from here as before the split
    "FORGET_DIR", "FORGET_FILE", "RECORD_FIELDS", "TERMINAL", "UNLEARNING_LABEL", "UNLEARNING_NS_LABEL", "Observed", "Refused", "Target",
    "apply_job", "apply_job_name", "apply_jobs", "check_reference", "cleanup", "compute_status", "fetch_pending_unlearnings",
    "fetch_unlearning_records",
    "forget_configmap", "forget_configmap_name", "get_finetune", "job_name", "labels", "memberships", "parse_spec", "pick_pending",
    "pick_record",
    "selector", "silo_of", "step", "unlearn_command", "unlearning_children", "unlearning_job", "unlearning_status",
]


RecordsFn = Callable[[str], Awaitable["list[UnlearningRecord] | None"]]
PendingFn = Callable[[str], Awaitable["list[PendingUnlearning] | None"]]


async def get_finetune(kube: Kube, namespace: str, name: str) -> dict | None:
    """The FederatedFinetune ``namespace/name`` as the API server has it, None when absent."""
    return await get_custom_object(kube, GROUP, VERSION, FINETUNE_PLURAL, namespace, name)


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
               generation: int | None, pending_of: PendingFn | None = None) -> dict:
    """Validate, create what is due, observe, and return the new status (raises Refused).

    ``pending_of`` reads the uploads waiting for approval (`GET /v1/unlearning/pending`, as an observer): while the
    Job's upload waits there, the phase is WaitingForApproval."""
    if previous.get("phase") in TERMINAL:
        return previous
    spec = parse_spec(raw_spec)
    finetune = await get_finetune(kube, target.namespace, spec.finetune)
    ft_spec = check_reference(spec, finetune, target.namespace)
    assert finetune is not None  # check_reference refuses a missing finetune
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
    record, live, pending = None, None, None
    url = aggregator_url(owner, tls=ft_spec.aggregator.tls is not None)
    job_phase = silo_phase(job, False) if job is not None else None
    if job_phase == "Succeeded" and "adapterVersionAfter" not in previous:
        record = pick_record(await records_of(url), spec.silo)
    if record is None and job_phase in ("Running", "Succeeded") and "adapterVersionAfter" not in previous and pending_of is not None:
        pending = pick_pending(await pending_of(url), spec.silo)
    if record is not None or "adapterVersionAfter" in previous:  # published: every other silo applies it
        wanted = apply_jobs(target, owner, ft_spec, spec)
        if record is not None:  # first sight of the record: the apply Jobs are due now
            await _admit(kube, owner, ft_spec, [s for s in ft_spec.silos if s.name != spec.silo])
            await _apply_owned(kube, target, wanted)
        live = {child["metadata"]["labels"][SILO_LABEL]: await kube.get(child) for child in wanted}
    observed = Observed(finetune_phase=ft_phase, job_created=True, job=job, failed_pods=pods, record=record, apply_jobs=live,
                        pending=pending)
    return compute_status(spec, ft_spec, target, observed, previous, now, generation)


async def cleanup(kube: Kube, target: Target, raw_spec: dict, status: dict) -> list[str]:
    """Delete the children in silo namespaces that this unlearning owns: those named in status, and those the
    finetune's silos would hold. Whatever status names is only a candidate: an object this unlearning did not create
    (its ownership label names another uid, or none) is left untouched. Returns the objects left alone."""
    doomed: list[dict] = []
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
