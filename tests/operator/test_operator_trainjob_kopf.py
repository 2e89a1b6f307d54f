"""A 2-node silo through the real kopf operator against the emulator under ``multiNode: trainjob``: its Kubeflow Trainer
TrainJob is created after consent (no JobSet, no Job), its status and its pods' reach the CR's status (ranks ready from
the pods, no restart count, the failing rank's exit code and reason), suspend reaches it and deletion removes it; without
the TrainJob CRD the first write answers 404 and the status says so (``TrainJobMissing``). The emulator stores
TrainJobs; no Trainer controller ran (the test posts the pods and the status Trainer would write)."""

from __future__ import annotations

import copy

import kopf
import pytest
from support.kube_emulator import CR, JOBS, JOBSETS, MERGE, TRAINJOBS, writes_in
from support.operator_harness import (
    CR_PATH,
    EXAMPLE,
    NAME,
    NS,
    OWNER,
    SILO_NS,
    alive,
    consent,
    create_cr,
    eventually,
    job,
    membership,
    raw,
    set_pod_status,
    status,
)

from fedshield.api.models import FederatedFinetuneSpec
from fedshield.operator import handlers
from fedshield.operator.kube import ApiError, object_path
from fedshield.operator.manifests import Site
from fedshield.operator.trainjob import trainjob_name

SILO = "hospital-a"
SILO_NAMESPACE = SILO_NS[SILO]
READY = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}


@pytest.fixture
def trainjob_mode(monkeypatch):
    monkeypatch.setenv("FEDSHIELD_MULTI_NODE", "trainjob")  # read when the operator starts (Site.from_environment)


def two_node_spec() -> dict:
    spec = copy.deepcopy(EXAMPLE["spec"])
    spec["silos"][0]["nodes"] = 2
    return spec


def admitted(k8s) -> dict:
    return next((c for c in status(k8s).get("conditions", []) if c["type"] == "Admitted"), {})


def silo_status(k8s) -> dict:
    return next((s for s in status(k8s).get("silos", []) if s["name"] == SILO), {})


async def post_node_pod(k8s, index: int, trainjob: dict, **pod_status) -> str:
    """A pod as Trainer's JobSet would make it: the runtime patch's labels (TrainJobs name no pod template of their own)."""
    template = trainjob["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    name = f"{trainjob['metadata']['name']}-node-0-{index}-x"
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": SILO_NAMESPACE, "labels": template["metadata"]["labels"]},
            "spec": {"containers": [{"name": "node", "image": trainjob["spec"]["trainer"]["image"]}]}}
    response = await k8s.post(f"/api/v1/namespaces/{SILO_NAMESPACE}/pods", json=body)
    assert response.status == 200, await response.text()
    await set_pod_status(k8s, SILO_NAMESPACE, name, **pod_status)
    return name


async def set_trainjob_status(k8s, name: str, **trainjob_status) -> None:
    response = await k8s.patch(f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{SILO_NAMESPACE}/trainjobs/{name}/status",
                               json={"status": trainjob_status}, headers=MERGE)
    assert response.status == 200, await response.text()


NODE = {"name": "node", "ready": 0, "succeeded": 0, "failed": 0, "active": 1, "suspended": 0}


async def test_two_node_silo_as_a_trainjob_from_cr_to_status(trainjob_mode, k8s, operator):
    await create_cr(k8s, two_node_spec())
    await eventually(lambda: admitted(k8s).get("reason") == "ConsentMissing", what="ConsentMissing")
    name = trainjob_name(OWNER, SILO)
    assert not alive(k8s, (TRAINJOBS, SILO_NAMESPACE, name))  # nothing before consent
    await consent(k8s)
    await eventually(lambda: alive(k8s, (TRAINJOBS, SILO_NAMESPACE, name)), what="the silo's TrainJob")
    trainjob = raw(k8s, (TRAINJOBS, SILO_NAMESPACE, name))
    assert trainjob["spec"]["trainer"]["numNodes"] == 2 and trainjob["spec"]["runtimeRef"]["name"] == "fedshield-torch"
    assert not alive(k8s, (JOBS, SILO_NAMESPACE, job(SILO))) and not alive(k8s, (JOBSETS, SILO_NAMESPACE, name))
    assert [w for w in writes_in(k8s, SILO_NAMESPACE) if "/jobsets" in w] == []
    await eventually(lambda: all(alive(k8s, (JOBS, ns, job(s))) for s, ns in SILO_NS.items() if s != SILO), what="other silos' Jobs")
    await eventually(lambda: silo_status(k8s).get("ranksReady") == "0/2", what="0/2 ranks")
    assert "restarts" not in silo_status(k8s)  # a TrainJob does not report them

    rank0 = await post_node_pod(k8s, 0, trainjob, **READY)
    await post_node_pod(k8s, 1, trainjob, **READY)
    await set_trainjob_status(k8s, name, jobsStatus=[dict(NODE, ready=1)])
    await eventually(lambda: silo_status(k8s).get("ranksReady") == "2/2" and silo_status(k8s)["phase"] == "Running", what="2/2 ranks")

    await set_pod_status(k8s, SILO_NAMESPACE, rank0, phase="Failed", conditions=[], containerStatuses=[
        {"name": "node", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}])
    await set_trainjob_status(k8s, name, conditions=[{"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "jobset failed",
                                                      "lastTransitionTime": "2026-01-01T00:00:00Z"}])
    await eventually(lambda: silo_status(k8s).get("phase") == "Failed", what="the silo Failed")
    assert (silo_status(k8s)["exitCode"], silo_status(k8s)["reason"], silo_status(k8s)["ranksReady"]) == (137, "OOMKilled", "1/2")
    await eventually(lambda: {c["type"]: c for c in status(k8s)["conditions"]}["Degraded"]["reason"] == "SiloFailed", what="Degraded")
    assert "silo hospital-a failed (OOMKilled, exit code 137)" in {c["type"]: c for c in status(k8s)["conditions"]}["Degraded"]["message"]

    response = await k8s.patch(f"{CR_PATH}/{NAME}", json={"spec": {"suspend": True}, "metadata": {"generation": 2}}, headers=MERGE)
    assert response.status == 200
    await eventually(lambda: raw(k8s, (TRAINJOBS, SILO_NAMESPACE, name))["spec"]["suspend"] is True, what="the TrainJob suspended")
    response = await k8s.delete(f"{CR_PATH}/{NAME}")
    assert response.status == 200
    await eventually(lambda: k8s.objects[CR, NS, NAME].deleted, what="CR deleted after the finalizer")
    assert k8s.objects[TRAINJOBS, SILO_NAMESPACE, name].deleted


class NoTrainJobApi:
    """A Kube where every silo consented and nothing exists yet, but Kubeflow Trainer is not installed (no CRD: 404)."""

    async def list(self, api_version, kind, namespace, selector=None):
        silo = next(s for s in EXAMPLE["spec"]["silos"] if s["namespace"] == namespace)
        return [membership(silo)] if kind == "FederationMembership" else []

    async def get(self, obj):
        return None

    async def apply(self, obj, uid):
        if obj["kind"] == "TrainJob":
            raise ApiError("POST", object_path(obj).rsplit("/", 1)[0], 404, b'{"message": "the server could not find the requested resource"}')
        return "created"


async def test_without_the_trainjob_crd_the_status_says_so():
    memo = kopf.Memo(kube=NoTrainJobApi(), site=Site(multi_node="trainjob"))
    patch, meta = kopf.Patch(), {"name": OWNER.name, "namespace": OWNER.namespace, "uid": OWNER.uid, "generation": 1}
    assert not await handlers.admit_and_apply(memo, OWNER, FederatedFinetuneSpec.model_validate(two_node_spec()), meta, {}, patch)
    condition = patch["status"]["conditions"][0]
    assert (condition["type"], condition["status"], condition["reason"]) == ("Admitted", "False", "TrainJobMissing")
    assert "trainer.kubeflow.org/v1alpha1" in condition["message"] and "docs/deploy.md" in condition["message"]
