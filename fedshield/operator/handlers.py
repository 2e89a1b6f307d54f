"""Thin kopf handlers: parse, build (pure), apply, observe, compute status (pure), patch.

Shared state comes through kopf's ``memo``: ``memo.kube`` (a :class:`Kube`),
``memo.aggregator_status`` (an async callable: aggregator URL -> its /v1/status or None) and
``memo.unlearning_records`` (aggregator URL -> its /v1/unlearning ledger or None).
"""

from __future__ import annotations

import datetime as dt
import logging
import os

import kopf
from pydantic import ValidationError

from ..api import unlearning as unlearning_api
from .. import metrics
from ..api.models import GROUP, IMMUTABLE, KIND, PLURAL, VERSION, FederatedFinetuneSpec
from . import telemetry, unlearning
from .aggregator_http import get_json
from .kube import Kube
from .manifests import (
    FEDERATION_LABEL, NAMESPACE_LABEL, SILO_LABEL, Owner, aggregator_url, desired_children, plan_configmap, silo_job,
)
from .status import Observed, compute_status

log = logging.getLogger("fedshield.operator")
FINALIZER = f"{GROUP}/cleanup"
STATUS_INTERVAL_S = float(os.environ.get("FEDSHIELD_STATUS_INTERVAL", "10"))
RESOURCE = (GROUP, VERSION, PLURAL)
UNLEARNING = (GROUP, VERSION, unlearning_api.PLURAL)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def fetch_aggregator_status(url: str) -> dict | None:
    """The aggregator's /v1/status, or None when it is not reachable (yet)."""
    return await get_json(f"{url}/v1/status")


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


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    configure(settings)
    if getattr(memo, "kube", None) is None:
        memo.kube = Kube.from_environment()
    if getattr(memo, "aggregator_status", None) is None:
        memo.aggregator_status = fetch_aggregator_status
    if getattr(memo, "unlearning_records", None) is None:
        memo.unlearning_records = unlearning.fetch_unlearning_records


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
    jobs, failed = {}, {}
    for namespace in sorted({s.namespace for s in spec.silos}):
        for job in await kube.list("batch/v1", "Job", namespace, selector):
            jobs[job["metadata"]["labels"].get(SILO_LABEL)] = job
        for pod in await kube.list("v1", "Pod", namespace, selector):
            if pod.get("status", {}).get("phase") == "Failed":
                failed.setdefault(pod["metadata"]["labels"].get(SILO_LABEL), []).append(pod)
    aggregator = await memo.aggregator_status(aggregator_url(owner, tls=spec.aggregator.tls is not None))
    return Observed(jobs=jobs, failed_pods=failed, aggregator=aggregator, aggregator_ready=aggregator is not None)


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
    patch.status.update({"phase": "Failed", "observedGeneration": meta.get("generation"), "conditions": [{
        "type": "Failed", "status": "True", "reason": reason, "message": message[:2000],
        "lastTransitionTime": now(), "observedGeneration": meta.get("generation")}]})
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
    owner = owner_of(meta)
    for child in desired_children(owner, parsed):
        result = await memo.kube.apply(child)
        if result != "unchanged":
            metrics.OPERATOR_CHILDREN_APPLIED.labels(child["kind"]).inc()
            log.info("%s %s %s/%s", result, child["kind"], child["metadata"]["namespace"], child["metadata"]["name"])
    await refresh_status(body, meta, status, patch, memo, parsed)


@kopf.timer(*RESOURCE, interval=STATUS_INTERVAL_S, initial_delay=STATUS_INTERVAL_S)
async def watch_progress(body, meta, spec, status, patch, memo, **_) -> None:
    """Follow silo Jobs and aggregator rounds into status (not over a refusal of this generation)."""
    refused = [c for c in (status or {}).get("conditions", []) if c.get("reason") in REFUSALS]
    if refused and (status or {}).get("observedGeneration") == meta.get("generation"):
        return
    try:
        parsed = FederatedFinetuneSpec.model_validate(dict(spec))
    except ValidationError:
        return  # reported by reconcile
    await refresh_status(body, meta, status, patch, memo, parsed)
    if patch and await _changed_since(memo.kube, meta):
        patch.clear()  # this tick saw an older object: writing would undo a newer refusal or generation


async def _changed_since(kube: Kube, meta) -> bool:
    """Whether the CR moved on while a timer tick worked (timers run beside the change handlers)."""
    fresh = await unlearning.get_finetune(kube, meta["namespace"], meta["name"])
    if fresh is None or fresh["metadata"].get("generation") != meta.get("generation"):
        return True
    current = fresh.get("status") or {}
    refused = any(c.get("reason") in REFUSALS for c in current.get("conditions", []))
    return refused and current.get("observedGeneration") == meta.get("generation")


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
    for silo in parsed.silos:
        await memo.kube.delete(silo_job(owner, parsed, silo))
    for namespace in sorted({s.namespace for s in parsed.silos} - {owner.namespace}):
        await memo.kube.delete(plan_configmap(owner, namespace, ""))


# --- FederatedUnlearning: the logic is in unlearning.py; these only wire it to kopf -------------

def _unlearning_target(meta) -> unlearning.Target:
    return unlearning.Target(meta["name"], meta["namespace"], meta["uid"])


async def _unlearning_step(meta, spec, status, patch, memo) -> None:
    previous = dict(status or {})
    try:
        new = await unlearning.step(memo.kube, memo.unlearning_records, _unlearning_target(meta), dict(spec), previous, now(),
                                    meta.get("generation"))
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


@kopf.timer(*UNLEARNING, interval=STATUS_INTERVAL_S, initial_delay=STATUS_INTERVAL_S)
async def follow_unlearning(meta, spec, status, patch, memo, **_) -> None:
    """Wait for the finetune, then follow the unlearning and apply Jobs into status until done."""
    if (status or {}).get("phase") in unlearning.TERMINAL:
        return
    try:
        await _unlearning_step(meta, spec, status, patch, memo)
    except kopf.PermanentError:
        pass  # reported in status by _unlearning_step; a timer has no one to raise to


@kopf.on.delete(*UNLEARNING)
async def cleanup_unlearning(meta, spec, status, memo, **_) -> None:
    """Delete its Jobs and ConfigMap in silo namespaces (owner references cannot reach them)."""
    telemetry.observe_phase(unlearning_api.KIND, f"{meta['namespace']}/{meta['name']}", None)
    await unlearning.cleanup(memo.kube, _unlearning_target(meta), dict(spec), dict(status or {}))
