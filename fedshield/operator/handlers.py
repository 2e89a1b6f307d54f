"""Thin kopf handlers: parse, build (pure), apply, observe, compute status (pure), patch.

Shared state comes through kopf's ``memo``: ``memo.kube`` (a :class:`Kube`),
``memo.aggregator_status`` (an async callable: aggregator URL -> its /v1/status or None) and
``memo.unlearning_records`` (aggregator URL -> its /v1/unlearning ledger or None), ``memo.site`` (:class:`Site`) and
``memo.jobset_api`` (whether the API server serves JobSets, for ``multiNode: auto``). The status timers are
registered when the operator starts, every ``memo.status_interval_s`` seconds (default: ``$FEDSHIELD_STATUS_INTERVAL``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Mapping

import httpx
import kopf
from pydantic import ValidationError

from .. import metrics
from ..api import unlearning as unlearning_api
from ..api.models import GROUP, IMMUTABLE, KIND, PLURAL, VERSION, FederatedFinetuneSpec, FederatedFinetuneStatus
from ..wire.messages import Status
from . import consent, jobset, telemetry, trainjob, unlearning
from .aggregator_http import fetch_status
from .kube import Conflict, FieldConflict, Kube
from .manifests import (
    FEDERATION_LABEL,
    NAMESPACE_LABEL,
    OWNER_UID_LABEL,
    SILO_LABEL,
    Owner,
    Site,
    aggregator_url,
    desired_children,
    owned_by,
    plan_configmap,
)
from .status import Observed, admitted_condition, compute_status, condition, pod_ready, status_body

log = logging.getLogger("fedshield.operator")
FINALIZER = f"{GROUP}/cleanup"
STATUS_INTERVAL_ENV, DEFAULT_STATUS_INTERVAL_S = "FEDSHIELD_STATUS_INTERVAL", 10.0
_TIMERS: dict[int, float] = {}  # id(registry) -> the interval its status timers were registered with
RESOURCE = (GROUP, VERSION, PLURAL)
UNLEARNING = (GROUP, VERSION, unlearning_api.PLURAL)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def fetch_aggregator_status(url: str) -> Status | None:
    """The aggregator's /v1/status, or None when it is not reachable (yet)."""
    return await fetch_status(url)


def configure(settings: kopf.OperatorSettings) -> None:
    """Our own finalizer and storage prefix, explicit watch timeouts, events at warning level and up."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.posting.level = logging.WARNING
    # A status timer caught mid-tick by a deletion would otherwise hold the finalizer for 60 s.
    settings.background.cancellation_polling = 1


def status_interval_s(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds between two status refreshes of each CR (``$FEDSHIELD_STATUS_INTERVAL``), read when the operator starts."""
    raw = environ.get(STATUS_INTERVAL_ENV)
    value = float(raw) if raw else DEFAULT_STATUS_INTERVAL_S
    if not value > 0:
        raise ValueError(f"{STATUS_INTERVAL_ENV} must be a positive number of seconds, not {raw!r}")
    return value


def register_timers(interval_s: float, registry: kopf.OperatorRegistry | None = None) -> float:
    """Register the status timers of both kinds every ``interval_s`` seconds, once per registry; returns the interval in effect
    (that of the first registration: kopf cannot change a timer's interval afterwards)."""
    registry = registry or kopf.get_default_registry()
    earlier = _TIMERS.get(id(registry))
    if earlier is not None:
        if earlier != interval_s:
            log.warning("status timers already run every %s s; %s s is ignored", earlier, interval_s)
        return earlier
    for resource, fn in ((RESOURCE, watch_progress), (UNLEARNING, follow_unlearning)):
        kopf.timer(*resource, interval=interval_s, initial_delay=interval_s, registry=registry)(fn)
    _TIMERS[id(registry)] = interval_s
    return interval_s


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    configure(settings)
    memo.status_interval_s = register_timers(getattr(memo, "status_interval_s", None) or status_interval_s())
    if getattr(memo, "kube", None) is None:
        memo.kube = Kube.from_environment()
    if getattr(memo, "aggregator_status", None) is None:
        memo.aggregator_status = fetch_aggregator_status
    if getattr(memo, "unlearning_records", None) is None:
        memo.unlearning_records = unlearning.fetch_unlearning_records
    if getattr(memo, "unlearning_pending", None) is None:
        memo.unlearning_pending = unlearning.fetch_pending_unlearnings
    if getattr(memo, "site", None) is None:
        memo.site = Site.from_environment()
    if memo.site.multi_node == "auto":
        try:
            served = await jobset_api_served(memo)
        except Exception as exc:  # noqa: BLE001  (asked again when a CR needs JobSets)
            log.warning("could not ask the API server whether it serves JobSets: %s", exc)
        else:
            log.info("multiNode: auto: %s", "JobSets are served, multi-node silos run as JobSets" if served else
                     f"{jobset.API_VERSION} {jobset.PLURAL} not served, multi-node silos are refused until JobSet is installed")


def _mode(memo) -> str:
    """The operator's ``multiNode`` (:class:`Site`; ``auto`` where the memo has none)."""
    site = getattr(memo, "site", None)
    return site.multi_node if site is not None else "auto"


async def jobset_api_served(memo) -> bool:
    """Whether the API server serves JobSets (API discovery, :meth:`Kube.serves`; no RBAC needed), kept in
    ``memo.jobset_api``: a yes is kept, a no is asked again next time (JobSet installed after the operator started is
    found at the next status tick of a CR that needs it)."""
    if getattr(memo, "jobset_api", None):
        return True
    try:
        served = await memo.kube.serves(jobset.API_VERSION, jobset.PLURAL)
    except httpx.HTTPStatusError as exc:
        log.warning("API discovery of %s answered %s: taken as not served", jobset.API_VERSION, exc.response.status_code)
        served = False
    memo.jobset_api = served
    return served


def parse(spec: dict) -> FederatedFinetuneSpec:
    try:
        return FederatedFinetuneSpec.model_validate(dict(spec))
    except ValidationError as exc:
        raise kopf.PermanentError(f"invalid spec: {exc}") from None


def owner_of(meta) -> Owner:
    return Owner(meta["name"], meta["namespace"], meta["uid"])


async def observe(kube: Kube, owner: Owner, spec: FederatedFinetuneSpec, memo) -> Observed:
    """Silo Jobs and failed pods (one list per silo namespace), and the aggregator's progress."""
    selector = f"{FEDERATION_LABEL}={owner.name},{NAMESPACE_LABEL}={owner.namespace}"
    jobs: dict[str, dict] = {}
    failed: dict[str, list[dict]] = {}
    jobsets: dict[str, dict] = {}
    ready: dict[str, int] = {}
    multi_namespaces = {s.namespace for s in spec.silos if s.nodes > 1}
    group_api = (trainjob.API_VERSION, trainjob.KIND) if _mode(memo) == "trainjob" else (jobset.API_VERSION, jobset.KIND)
    for namespace in sorted({s.namespace for s in spec.silos}):
        try:
            if namespace in multi_namespaces:
                for js in await _list_groups(kube, *group_api, namespace, selector):
                    if js["metadata"].get("labels", {}).get(OWNER_UID_LABEL) == owner.uid:
                        jobsets[js["metadata"]["labels"].get(SILO_LABEL)] = js
            for job in await kube.list("batch/v1", "Job", namespace, selector):
                if job["metadata"].get("labels", {}).get(OWNER_UID_LABEL) == owner.uid:
                    jobs[job["metadata"]["labels"].get(SILO_LABEL)] = job
            for pod in await kube.list("v1", "Pod", namespace, selector):
                if pod.get("status", {}).get("phase") == "Failed":
                    failed.setdefault(pod["metadata"]["labels"].get(SILO_LABEL), []).append(pod)
                elif namespace in multi_namespaces and pod_ready(pod):
                    silo_of = pod["metadata"]["labels"].get(SILO_LABEL)
                    ready[silo_of] = ready.get(silo_of, 0) + 1
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 403:  # a namespace that withdrew its RoleBinding: nothing to see there
                raise
    aggregator = await memo.aggregator_status(aggregator_url(owner, tls=spec.aggregator.tls is not None))
    return Observed(jobs=jobs, failed_pods=failed, aggregator=aggregator, aggregator_ready=aggregator is not None,
                    jobsets=jobsets, ready_pods=ready)


async def _list_groups(kube: Kube, api_version: str, kind: str, namespace: str, selector: str) -> list[dict]:
    """The JobSets (or TrainJobs) of this federation in ``namespace``; none when their CRD is absent (admission says so)."""
    try:
        return await kube.list(api_version, kind, namespace, selector)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            return []
        raise


async def refresh_status(body, meta, status, patch, memo, spec: FederatedFinetuneSpec) -> None:
    owner = owner_of(meta)
    with metrics.OPERATOR_REFRESH_SECONDS.labels(KIND).time():
        observed = await observe(memo.kube, owner, spec, memo)
        new = compute_status(spec, observed, dict(status or {}), now(), meta.get("generation"),
                             aggregator_url(owner, tls=spec.aggregator.tls is not None))
    telemetry.observe_phase(KIND, f"{meta['namespace']}/{meta['name']}", new.get("phase"))
    if new != dict(status or {}):  # compute_status keeps transition times, so "unchanged" is plain equality
        patch.status.update(new)


def immutable_changes(old: dict | None, new: dict) -> list[str]:
    """Spec fields that may not change once created (the CRD enforces the same with CEL)."""
    if not old:
        return []
    return [f"spec.{name}" for name in IMMUTABLE if old.get(name) != new.get(name)]


REFUSALS = ("InvalidSpec", "ImmutableFieldChanged")


def _refuse(patch, meta, reason: str, message: str) -> kopf.PermanentError:
    failed = condition([], "Failed", True, reason, message[:2000], now(), meta.get("generation"))
    patch.status.update({"phase": "Failed", "observedGeneration": meta.get("generation"), "conditions": [status_body(failed)]})
    return kopf.PermanentError(message)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
async def reconcile(body, meta, spec, status, patch, memo, old=None, **_) -> None:
    """Create or bring in line every child, then report status."""
    changed = immutable_changes((old or {}).get("spec"), dict(spec))
    if changed:
        raise _refuse(patch, meta, "ImmutableFieldChanged", f"{', '.join(changed)} cannot change after creation; children left as they were")
    try:
        parsed = parse(spec)
    except kopf.PermanentError as exc:
        raise _refuse(patch, meta, "InvalidSpec", str(exc)) from None
    if await admit_and_apply(memo, owner_of(meta), parsed, meta, status, patch):
        await refresh_status(body, meta, status, patch, memo, parsed)


async def conflicts(kube: Kube, children: list[dict], uid: str) -> list[str]:
    """Existing objects with a child's name that this CR did not create (left untouched)."""
    out = []
    for child in children:
        live = await kube.get(child)
        if live is not None and not owned_by(live, uid):
            out.append(f"{child['kind']} {child['metadata']['namespace']}/{child['metadata']['name']}")
    return out


async def admit_and_apply(memo, owner: Owner, parsed: FederatedFinetuneSpec, meta, status, patch) -> bool:
    """Check consent and ownership, then create or bring in line every child; False (status says why) when not admitted.

    Nothing is written anywhere unless every silo namespace consented and no child name is taken by an object this CR
    does not own; each write is checked again against the live object (``Kube.apply``)."""
    if memo.site.multi_node == "auto" and any(s.nodes > 1 for s in parsed.silos):
        refusal = multi_node_refusal(parsed, memo.site, await jobset_api_served(memo))
    else:
        refusal = multi_node_refusal(parsed, memo.site)
    if refusal:
        _not_admitted(patch, meta, status, *refusal)
        return False
    problems = [p for p in [consent.check_aggregator(parsed, memo.site.aggregator_image_prefixes)] if p]
    problems += consent.check((owner.namespace, owner.name), parsed, await unlearning.memberships(memo.kube, {s.namespace for s in parsed.silos}))
    if problems:
        _not_admitted(patch, meta, status, "ConsentMissing", "; ".join(problems))
        return False
    children = desired_children(owner, parsed, memo.site)
    try:
        taken = await conflicts(memo.kube, children, owner.uid)
        if not taken:
            for child in children:
                result = await memo.kube.apply(child, owner.uid)
                if result == "conflict":
                    taken.append(f"{child['kind']} {child['metadata']['namespace']}/{child['metadata']['name']}")
                elif result == "retry":  # changed between our read and our patch: read it again, soon
                    raise kopf.TemporaryError(f"{child['kind']} {child['metadata']['namespace']}/{child['metadata']['name']} changed meanwhile", delay=1)
                elif result != "unchanged":
                    metrics.OPERATOR_CHILDREN_APPLIED.labels(child["kind"]).inc()
                    log.info("%s %s %s/%s", result, child["kind"], child["metadata"]["namespace"], child["metadata"]["name"])
    except FieldConflict as exc:  # server-side apply: another field manager holds a field we set; never forced
        _not_admitted(patch, meta, status, "FieldConflict", f"{exc}; left as it is (remove that manager's change, or its fields)")
        return False
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404 and f"/{jobset.PLURAL}" in exc.request.url.path:
            _not_admitted(patch, meta, status, "JobSetMissing", f"{exc.request.method} {exc.request.url.path} answered 404: a silo with "
                          "nodes > 1 runs as a JobSet, and the JobSet CRD (jobset.x-k8s.io/v1alpha2) is not installed (docs/deploy.md)")
            return False
        if exc.response.status_code == 404 and f"/{trainjob.PLURAL}" in exc.request.url.path:
            _not_admitted(patch, meta, status, "TrainJobMissing", f"{exc.request.method} {exc.request.url.path} answered 404: under "
                          f"multiNode: trainjob a silo with nodes > 1 runs as a TrainJob, and Kubeflow Trainer ({trainjob.API_VERSION}) "
                          "is not installed (docs/deploy.md)")
            return False
        if exc.response.status_code != 403:
            raise
        path = exc.request.url.path
        namespace = path.split("/namespaces/", 1)[1].split("/", 1)[0] if "/namespaces/" in path else "?"
        _not_admitted(patch, meta, status, "RoleMissing",
                      f'the operator may not write in namespace "{namespace}" ({exc.request.method} {path} is forbidden): '
                      "its RoleBinding there comes with the fedshield-silo chart (silo namespaces) or aggregatorNamespaces (operator chart)")
        return False
    if taken:
        _not_admitted(patch, meta, status, "NameConflict",
                      f"{', '.join(taken)} {'exists' if len(taken) == 1 else 'exist'} but not created by this FederatedFinetune: "
                      "left untouched and nothing created (delete or rename it, or rename this FederatedFinetune)")
        return False
    return True


JOBSET_INSTALL = ("install JobSet beside the operator (a release serving jobset.x-k8s.io/v1alpha2: kubectl apply --server-side -f "
                  "https://github.com/kubernetes-sigs/jobset/releases/download/<version>/manifests.yaml, docs/deploy.md)")


def multi_node_refusal(parsed: FederatedFinetuneSpec, site: Site, jobset_api: bool = False) -> tuple[str, str] | None:
    """Why silos with nodes > 1 are not run, as (reason, message); None when none is asked for or they run (JobSets, TrainJobs).

    ``site.multi_node``: ``jobset`` runs them (a missing JobSet CRD is reported when the first write answers 404),
    ``auto`` runs them when ``jobset_api`` (the API server serves JobSets, :func:`jobset_api_served`), ``trainjob`` runs
    them as TrainJobs (no discovery: a missing Trainer shows as a 404) unless a silo sets what a TrainJob cannot carry,
    ``off`` refuses."""
    multi = [f"{s.name} ({s.nodes} nodes)" for s in parsed.silos if s.nodes > 1]
    if site.multi_node == "trainjob":
        odd = [f"{s.name} ({', '.join(trainjob.unsupported(s))})" for s in parsed.silos if s.nodes > 1 and trainjob.unsupported(s)]
        return ("TrainJobUnsupported", f"silos {', '.join(odd)}: a multi-node silo runs as a Kubeflow Trainer TrainJob "
                "(multiNode: trainjob), whose runtime patch (v2.3.0) cannot set these pod fields; nothing was created. Drop them, "
                "or run the operator with multiNode: jobset (docs/operator.md)") if odd else None
    if not multi or site.multi_node == "jobset" or (site.multi_node == "auto" and jobset_api):
        return None
    silos = f"silos {', '.join(multi)}"
    if site.multi_node == "auto":
        return ("JobSetMissing", f"{silos}: a multi-node silo runs as a JobSet, and this API server does not serve "
                f"{jobset.API_VERSION} {jobset.PLURAL} (the operator runs with multiNode: auto); nothing was created. Either "
                f"{JOBSET_INSTALL}: the next status tick finds it; or use nodes: 1. Experimental: multi-rank silo agents have run "
                "on one machine only (issue #20, docs/operator.md)")
    return ("MultiNodeDisabled", f"{silos}: multi-node silos are off in this operator (multiNode: off); nothing was created. "
            f"Use nodes: 1, or {JOBSET_INSTALL} and run the operator with multiNode: auto (the default) or jobset "
            "(FEDSHIELD_MULTI_NODE). Experimental: multi-rank silo agents have run on one machine only, gloo on CPU, never on a "
            "cluster (issue #20, docs/operator.md)")


def _not_admitted(patch, meta, status, reason: str, message: str) -> None:
    """Status of a CR the operator will not act on yet (the timer checks again)."""
    previous = [c for c in (status or {}).get("conditions", []) if c.get("type") == "Admitted"]
    admitted = admitted_condition(previous, False, reason, message[:2000], now(), meta.get("generation"))
    new = FederatedFinetuneStatus(phase="Pending", observed_generation=meta.get("generation"), conditions=[admitted],
                                  silos=[], silos_ready="0/0").model_dump(by_alias=True, exclude_unset=True)
    if any(dict(status or {}).get(k) != v for k, v in new.items()):
        patch.status.update(new)


async def watch_progress(body, meta, spec, status, patch, memo, **_) -> None:
    """Follow silo Jobs and aggregator rounds into status (not over a refusal of this generation); a timer (``register_timers``)."""
    await decide_and_write_status(memo, KIND, meta, spec, status, lambda m, s, st, p: _progress(m, s, st, p, memo))


async def _progress(meta, spec, status, patch, memo) -> None:
    refused = [c for c in (status or {}).get("conditions", []) if c.get("reason") in REFUSALS]
    if refused and (status or {}).get("observedGeneration") == meta.get("generation"):
        return
    try:
        parsed = FederatedFinetuneSpec.model_validate(dict(spec))
    except ValidationError:
        return  # reported by reconcile
    # Only a status that says so counts as admitted: an empty or older one means check consent and ownership now.
    admitted = any(c.get("type") == "Admitted" and c.get("status") == "True" for c in (status or {}).get("conditions", []))
    if admitted or await admit_and_apply(memo, owner_of(meta), parsed, meta, status, patch):
        await refresh_status(None, meta, status, patch, memo, parsed)


async def decide_and_write_status(memo, kind: str, meta, spec, status, decide, attempts: int = 3) -> None:
    """A timer's status write, conditional on the resourceVersion it was decided on.

    Timers run beside the change handlers: ``decide(meta, spec, status, patch)`` fills a fresh patch, which is written
    only if the object has not moved on since; on 409 the object is read again and the decision made again, so a newer
    generation or refusal is never overwritten (kopf's own patch is left empty)."""
    current = {"metadata": dict(meta), "spec": dict(spec or {}), "status": dict(status or {})}
    for _ in range(attempts):
        decided = kopf.Patch()
        await decide(current["metadata"], current.get("spec") or {}, current.get("status") or {}, decided)
        new = dict(decided.get("status") or {})
        if not new:
            return
        m = current["metadata"]
        try:
            await memo.kube.patch_status(f"{GROUP}/{VERSION}", kind, m["namespace"], m["name"], new, m.get("resourceVersion"))
            return
        except Conflict:
            fresh = await memo.kube.read(f"{GROUP}/{VERSION}", kind, m["namespace"], m["name"])
            if fresh is None:
                return
            current = fresh
    log.info("%s %s/%s kept changing during a status tick: the next tick decides", kind, meta["namespace"], meta["name"])


@kopf.on.delete(*RESOURCE)
async def cleanup(meta, spec, memo, **_) -> None:
    """Delete the children that owner references cannot reach: those in silo namespaces.

    State volumes are kept on purpose: they hold each silo's federated adapter.
    """
    try:
        parsed = FederatedFinetuneSpec.model_validate(dict(spec))
    except ValidationError:
        return  # nothing was created for an invalid spec
    owner = owner_of(meta)
    telemetry.observe_phase(KIND, f"{meta['namespace']}/{meta['name']}", None)
    mode = _mode(memo)
    doomed = [jobset.silo_workload(owner, parsed, silo, mode) for silo in parsed.silos  # a refused TrainJob silo: none was made
              if not (mode == "trainjob" and silo.nodes > 1 and trainjob.unsupported(silo))]
    doomed += [plan_configmap(owner, namespace, "") for namespace in sorted({s.namespace for s in parsed.silos} - {owner.namespace})]
    await delete_owned(memo.kube, doomed, owner.uid)


async def delete_owned(kube: Kube, objects: list[dict], uid: str) -> None:
    """Delete those of ``objects`` that ``uid`` owns; others, and namespaces the operator may not write, are left alone."""
    for obj in objects:
        try:
            result = await kube.delete(obj, uid)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 403:
                raise
            result = "forbidden"
        if result in ("not-owned", "forbidden"):
            log.warning("left %s %s/%s alone (%s)", obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"], result)


# --- FederatedUnlearning: the logic is in unlearning.py; these only wire it to kopf -------------

def _unlearning_target(meta) -> unlearning.Target:
    return unlearning.Target(meta["name"], meta["namespace"], meta["uid"])


async def _unlearning_step(meta, spec, status, patch, memo) -> None:
    previous = dict(status or {})
    try:
        new = await unlearning.step(memo.kube, memo.unlearning_records, _unlearning_target(meta), dict(spec), previous, now(),
                                    meta.get("generation"), pending_of=memo.unlearning_pending)
    except unlearning.Refused as exc:
        patch.status["message"] = str(exc)
        telemetry.observe_phase(unlearning_api.KIND, f"{meta['namespace']}/{meta['name']}", "Failed")
        raise _refuse(patch, meta, exc.reason, str(exc)) from None
    telemetry.observe_phase(unlearning_api.KIND, f"{meta['namespace']}/{meta['name']}", new.get("phase"))
    if new != previous:
        patch.status.update(new)


@kopf.on.resume(*UNLEARNING)
@kopf.on.create(*UNLEARNING)
async def reconcile_unlearning(meta, spec, status, patch, memo, **_) -> None:
    """Refuse a spec or reference that cannot work (naming the field); otherwise start or resume following it."""
    await _unlearning_step(meta, spec, status, patch, memo)


@kopf.on.update(*UNLEARNING)
async def refuse_unlearning_change(meta, patch, old, new, **_) -> None:
    """The whole spec is immutable (the CRD says so with CEL; this covers servers that skip it)."""
    if (old or {}).get("spec") != (new or {}).get("spec"):
        message = "spec cannot change after creation; create a new FederatedUnlearning"
        patch.status["message"] = message
        raise _refuse(patch, meta, "ImmutableFieldChanged", message)


async def follow_unlearning(meta, spec, status, patch, memo, **_) -> None:
    """Wait for the finetune, then follow the unlearning and apply Jobs into status until done."""
    async def decide(m, s, st, p) -> None:
        if (st or {}).get("phase") in unlearning.TERMINAL:
            return
        try:
            await _unlearning_step(m, s, st, p, memo)
        except kopf.PermanentError:
            pass  # reported in status by _unlearning_step; a timer has no one to raise to

    await decide_and_write_status(memo, unlearning_api.KIND, meta, spec, status, decide)


@kopf.on.delete(*UNLEARNING)
async def cleanup_unlearning(meta, spec, status, memo, **_) -> None:
    """Delete its Jobs and ConfigMap in silo namespaces (owner references cannot reach them)."""
    telemetry.observe_phase(unlearning_api.KIND, f"{meta['namespace']}/{meta['name']}", None)
    for left in await unlearning.cleanup(memo.kube, _unlearning_target(meta), dict(spec), dict(status or {})):
        log.warning("left %s alone: not created by FederatedUnlearning %s/%s", left, meta["namespace"], meta["name"])
