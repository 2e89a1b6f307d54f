"""The real kopf operator against kmock's Kubernetes emulator on loopback, in one event loop."""

from __future__ import annotations

import asyncio
import copy

import kopf
import pytest
from support.kube_emulator import (
    CONFIGMAPS,
    CR,
    DEPLOYMENTS,
    JOBS,
    MERGE,
    NETWORKPOLICIES,
    PVCS,
    SERVICES,
)
from support.operator_harness import (
    CR_PATH,
    EXAMPLE,
    NAME,
    NS,
    OWNER,
    SILO_NS,
    UID,
    alive,
    consent,
    create_cr,
    eventually,
    job,
    raw,
    set_job_status,
    status,
)

from fedshield import metrics
from fedshield.operator import handlers  # noqa: F401  (registers the handlers in kopf's default registry)
from fedshield.operator.manifests import plan_name


async def test_cr_creates_children_in_the_right_namespaces_with_the_right_mounts(k8s, operator):
    await consent(k8s)
    await create_cr(k8s)
    await eventually(lambda: all(alive(k8s, (JOBS, ns, job(silo))) for silo, ns in SILO_NS.items()), what="silo Jobs")
    for res, name in ((DEPLOYMENTS, f"{NAME}-aggregator"), (SERVICES, f"{NAME}-aggregator"), (CONFIGMAPS, plan_name(OWNER)),
                      (PVCS, f"{NAME}-aggregator-state"), (NETWORKPOLICIES, f"{NAME}-aggregator")):
        assert alive(k8s, (res, NS, name)), name
        assert raw(k8s, (res, NS, name))["metadata"]["ownerReferences"][0]["name"] == NAME
    deployment = raw(k8s, (DEPLOYMENTS, NS, f"{NAME}-aggregator"))
    assert [v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v] == [
        "fedshield-public-key", "triage-notes-aggregator-tls"]  # the public context and its own certificate: no silo's Secret
    for silo, ns in SILO_NS.items():
        pod = raw(k8s, (JOBS, ns, job(silo)))["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["keys"]["secret"]["secretName"] == "fedshield-keys"
        assert "persistentVolumeClaim" in volumes["data"] and alive(k8s, (CONFIGMAPS, ns, plan_name(OWNER)))
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    await eventually(lambda: status(k8s).get("silosReady") == "0/3", what="initial status")
    assert status(k8s)["phase"] == "Pending" and "fedshield.io/cleanup" in raw(k8s, (CR, NS, NAME))["metadata"]["finalizers"]
    assert not [r for r in k8s if "/secrets" in str(r.url)], "the operator must never touch a Secret"
    # the operator's own metrics: children it applied, resources by phase
    assert metrics.OPERATOR.get_sample_value("fedshield_operator_children_applied_total", {"kind": "Job"}) >= 3
    assert metrics.OPERATOR.get_sample_value("fedshield_operator_resources", {"kind": "FederatedFinetune", "phase": "Pending"}) >= 1


async def test_status_follows_pods_and_rounds_and_does_not_busy_loop(k8s, operator):
    kube, aggregator = operator
    await consent(k8s)
    await create_cr(k8s)
    await eventually(lambda: all(alive(k8s, (JOBS, ns, job(s))) for s, ns in SILO_NS.items()))
    await eventually(lambda: status(k8s).get("silosReady") == "0/3")
    for silo in SILO_NS:
        await set_job_status(k8s, silo, active=1)
    names = list(SILO_NS)
    aggregator.status = {"plan": {"state": "open"}, "closed": [
        {"round": 0, "contributors": names, "metadata": {n: {"val_score": a} for n, a in zip(names, (0.61, 0.7, 0.66), strict=False)}}]}
    await eventually(lambda: status(k8s).get("phase") == "Running" and status(k8s).get("round") == 1
                     and status(k8s).get("silosReady") == "3/3", what="Running, round 1, 3/3 ready")
    current = status(k8s)
    assert current["silosReady"] == "3/3" and current["fairnessGap"] == 0.09
    assert {c["type"]: c["status"] for c in current["conditions"]}["Ready"] == "True"
    assert all(c["observedGeneration"] == 1 for c in current["conditions"])
    # Settled: ticks read (one Job list and one Pod list per silo namespace) but write nothing.
    await asyncio.sleep(0.5)
    patches, calls, ticks = len(k8s["patch", CR]), kube.calls, aggregator.calls
    await asyncio.sleep(1.5)
    new_ticks = aggregator.calls - ticks
    assert new_ticks >= 1 and len(k8s["patch", CR]) == patches
    assert kube.calls - calls <= (new_ticks + 1) * 2 * len(set(SILO_NS.values()))  # a tick may straddle the window
    # A silo pod fails: reported with its exit code while the Job retries, then the federation fails below quorum.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1", "namespace": SILO_NS["hospital-a"], "labels": {
        "fedshield.io/federation": NAME, "fedshield.io/federation-namespace": NS, "fedshield.io/silo": "hospital-a",
        "fedshield.io/owner-uid": UID}},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "silo", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}}
    assert (await k8s.post(f"/api/v1/namespaces/{SILO_NS['hospital-a']}/pods", json=pod)).status == 200
    await set_job_status(k8s, "hospital-a", active=1, failed=1)
    await eventually(lambda: next(s for s in status(k8s)["silos"] if s["name"] == "hospital-a").get("reason") == "OOMKilled"
                     and next(s for s in status(k8s)["silos"] if s["name"] == "hospital-a").get("restarts") == 1)
    entry = next(s for s in status(k8s)["silos"] if s["name"] == "hospital-a")
    assert entry["exitCode"] == 137 and entry["restarts"] == 1
    assert {c["type"]: c["status"] for c in status(k8s)["conditions"]}["Degraded"] == "True"
    for silo in ("hospital-a", "hospital-b"):  # backoff limit exhausted for two of three (minSilos is 2)
        await set_job_status(k8s, silo, active=0, failed=5, conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
    await eventually(lambda: status(k8s).get("phase") == "Failed", what="Failed")
    failed = next(c for c in status(k8s)["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and "hospital-a failed (OOMKilled, exit code 137)" in failed["message"]


async def test_suspend_and_delete_clean_up(k8s, operator):
    await consent(k8s)
    await create_cr(k8s)
    await eventually(lambda: all(alive(k8s, (JOBS, ns, job(s))) for s, ns in SILO_NS.items()))
    response = await k8s.patch(f"{CR_PATH}/{NAME}", json={"spec": {"suspend": True}, "metadata": {"generation": 2}}, headers=MERGE)
    assert response.status == 200
    await eventually(lambda: raw(k8s, (DEPLOYMENTS, NS, f"{NAME}-aggregator"))["spec"]["replicas"] == 0, what="scaled to zero")
    await eventually(lambda: all(raw(k8s, (JOBS, ns, job(s)))["spec"]["suspend"] for s, ns in SILO_NS.items()))
    await eventually(lambda: status(k8s).get("phase") == "Suspended")
    response = await k8s.delete(f"{CR_PATH}/{NAME}")
    assert response.status == 200
    await eventually(lambda: k8s.objects[CR, NS, NAME].deleted, what="CR deleted after the finalizer")
    for silo, ns in SILO_NS.items():
        assert k8s.objects[JOBS, ns, job(silo)].deleted
        assert k8s.objects[CONFIGMAPS, ns, plan_name(OWNER)].deleted
        assert not k8s.objects[PVCS, ns, f"{job(silo)}-state"].deleted  # kept: it holds the silo's adapter


async def test_invalid_spec_is_reported_and_creates_nothing(k8s, operator):
    spec = copy.deepcopy(EXAMPLE["spec"])
    spec["aggregation"]["minSilos"] = 7
    await consent(k8s)
    await create_cr(k8s, spec)
    await eventually(lambda: status(k8s).get("phase") == "Failed", what="Failed on invalid spec")
    condition = status(k8s)["conditions"][0]
    assert condition["reason"] == "InvalidSpec" and "minSilos" in condition["message"]
    assert not any(alive(k8s, (JOBS, ns, job(s))) for s, ns in SILO_NS.items())
    assert not alive(k8s, (DEPLOYMENTS, NS, f"{NAME}-aggregator"))


async def test_change_to_an_immutable_field_is_refused(k8s, operator):
    await consent(k8s)
    await create_cr(k8s)
    await eventually(lambda: all(alive(k8s, (JOBS, ns, job(s))) for s, ns in SILO_NS.items()))
    response = await k8s.patch(f"{CR_PATH}/{NAME}", json={"spec": {"lora": {"r": 64}}, "metadata": {"generation": 2}}, headers=MERGE)
    assert response.status == 200  # a real API server refuses this already (CEL self == oldSelf); kmock does not
    await eventually(lambda: status(k8s).get("phase") == "Failed", what="refused")
    condition = status(k8s)["conditions"][0]
    assert condition["reason"] == "ImmutableFieldChanged" and "spec.lora" in condition["message"]


def test_the_status_interval_is_read_when_the_operator_starts():
    assert handlers.status_interval_s({}) == handlers.DEFAULT_STATUS_INTERVAL_S
    assert handlers.status_interval_s({handlers.STATUS_INTERVAL_ENV: "2.5"}) == 2.5
    with pytest.raises(ValueError, match="positive"):
        handlers.status_interval_s({handlers.STATUS_INTERVAL_ENV: "0"})
    registry = kopf.OperatorRegistry()
    assert handlers.register_timers(2.5, registry) == 2.5
    assert handlers.register_timers(7.0, registry) == 2.5  # once per registry: kopf cannot change a timer's interval
    timers = [h for h in registry._spawning.get_all_handlers() if getattr(h, "interval", None) is not None]
    assert sorted(h.interval for h in timers) == [2.5, 2.5]
