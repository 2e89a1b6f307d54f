"""A 2-node silo through the real kopf operator against the emulator: refused while multi-node is off, and under
``multiNode: auto`` (the default) while the API server does not serve JobSets (API discovery), admitted once it does;
under ``auto`` with JobSets served, or ``jobset``, its JobSet is created after consent (as Jobs are), and the JobSet's
and its pods' status reach the CR's status (ranks ready, restarts of the group, the failing rank's exit code and reason)."""

from __future__ import annotations

import asyncio
import copy

import kopf
import pytest
from support.kube_emulator import CR, JOBS, JOBSETS, MERGE, VERBS, writes_in
from support.operator_harness import (
    EXAMPLE,
    NS,
    OWNER,
    SILO_NS,
    FakeAggregator,
    alive,
    consent,
    create_cr,
    eventually,
    job,
    membership,
    raw,
    running_operator,
    set_pod_status,
    status,
)

from fedshield.api.models import FederatedFinetuneSpec
from fedshield.operator import handlers
from fedshield.operator.jobset import jobset_name
from fedshield.operator.kube import ApiError, Kube, object_path
from fedshield.operator.manifests import Site

SILO = "hospital-a"
SILO_NAMESPACE = SILO_NS[SILO]


def two_node_spec() -> dict:
    spec = copy.deepcopy(EXAMPLE["spec"])
    spec["silos"][0]["nodes"] = 2
    return spec


def admitted(k8s) -> dict:
    return next((c for c in status(k8s).get("conditions", []) if c["type"] == "Admitted"), {})


def silo_status(k8s) -> dict:
    return next((s for s in status(k8s).get("silos", []) if s["name"] == SILO), {})


@pytest.fixture(params=["jobset", "auto"])
def jobsets_on(request, monkeypatch):
    """Forced, or the default with the JobSet API served (the emulator declares it)."""
    monkeypatch.setenv("FEDSHIELD_MULTI_NODE", request.param)  # read when the operator starts (Site.from_environment)


@pytest.fixture
def multi_node_off(monkeypatch):
    monkeypatch.setenv("FEDSHIELD_MULTI_NODE", "off")


async def post_rank_pod(k8s, index: int, jobset: dict, **pod_status) -> str:
    template = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    name = f"{jobset['metadata']['name']}-rank-0-{index}-x"
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": SILO_NAMESPACE,
                                                            "labels": template["metadata"]["labels"]},
            "spec": template["spec"]}
    response = await k8s.post(f"/api/v1/namespaces/{SILO_NAMESPACE}/pods", json=body)
    assert response.status == 200, await response.text()
    await set_pod_status(k8s, SILO_NAMESPACE, name, **pod_status)
    return name


async def set_jobset_status(k8s, name: str, **jobset_status) -> None:
    response = await k8s.patch(f"/apis/jobset.x-k8s.io/v1alpha2/namespaces/{SILO_NAMESPACE}/jobsets/{name}/status",
                               json={"status": jobset_status}, headers=MERGE)
    assert response.status == 200, await response.text()


READY = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}


async def test_multi_node_is_refused_while_off(multi_node_off, k8s, operator):
    await consent(k8s)
    await create_cr(k8s, two_node_spec())
    await eventually(lambda: admitted(k8s).get("reason") == "MultiNodeDisabled", what="MultiNodeDisabled")
    assert "hospital-a (2 nodes)" in admitted(k8s)["message"] and status(k8s)["phase"] == "Pending"
    await asyncio.sleep(0.5)  # timer ticks
    assert not [w for w in writes_in(k8s, SILO_NAMESPACE) if "/federationmemberships" not in w]


async def test_the_jobset_api_is_found_by_discovery(k8s):
    kube = Kube.for_url(str(k8s.url).rstrip("/"))
    try:
        assert await kube.serves("jobset.x-k8s.io/v1alpha2", "jobsets") and await kube.serves("batch/v1", "jobs")
        assert not await kube.serves("jobset.x-k8s.io/v1alpha2", "jobsetz")
        assert not await kube.serves("jobset.x-k8s.io/v1alpha1", "jobsets")  # another version of the group: not served
        del k8s.resources[JOBSETS]  # no JobSet CRD: its group is not served at all (404)
        assert not await kube.serves("jobset.x-k8s.io/v1alpha2", "jobsets")
    finally:
        await kube.close()
    assert all(r.url.path.startswith("/apis/") and r.method.value == "GET" for r in k8s)  # discovery: nothing but GETs of /apis/...


async def test_auto_refuses_without_the_jobset_api_and_admits_once_it_is_served(monkeypatch, k8s):
    monkeypatch.delenv("FEDSHIELD_MULTI_NODE", raising=False)  # the default: auto
    del k8s.resources[JOBSETS]  # JobSet not installed
    name = jobset_name(OWNER, SILO)
    async with running_operator(k8s, aggregator_status=FakeAggregator()):
        await consent(k8s)
        await create_cr(k8s, two_node_spec())
        await eventually(lambda: admitted(k8s).get("reason") == "JobSetMissing", what="JobSetMissing")
        message = admitted(k8s)["message"]
        assert "hospital-a (2 nodes)" in message and "multiNode: auto" in message and "jobset.x-k8s.io/v1alpha2 jobsets" in message
        assert "kubectl apply --server-side -f https://github.com/kubernetes-sigs/jobset/releases/download/" in message
        assert status(k8s)["phase"] == "Pending"
        await asyncio.sleep(0.5)  # timer ticks: still nothing written in the silo namespace
        assert not [w for w in writes_in(k8s, SILO_NAMESPACE) if "/federationmemberships" not in w]
        k8s.resources[JOBSETS] = dict(kind="JobSet", singular="jobset", namespaced=True, verbs=VERBS, subresources={"status"})
        await eventually(lambda: alive(k8s, (JOBSETS, SILO_NAMESPACE, name)), what="the JobSet, once JobSet is installed")
        await eventually(lambda: admitted(k8s).get("status") == "True", what="Admitted")
        assert not alive(k8s, (JOBS, SILO_NAMESPACE, job(SILO)))


async def test_two_node_silo_from_cr_to_status(jobsets_on, k8s, operator):
    await create_cr(k8s, two_node_spec())
    await eventually(lambda: admitted(k8s).get("reason") == "ConsentMissing", what="ConsentMissing")
    name = jobset_name(OWNER, SILO)
    assert not alive(k8s, (JOBSETS, SILO_NAMESPACE, name))  # nothing before consent
    await consent(k8s)
    await eventually(lambda: alive(k8s, (JOBSETS, SILO_NAMESPACE, name)), what="the silo's JobSet")
    jobset = raw(k8s, (JOBSETS, SILO_NAMESPACE, name))
    assert jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["completions"] == 2
    assert not alive(k8s, (JOBS, SILO_NAMESPACE, job(SILO)))  # the JobSet, not a Job
    await eventually(lambda: all(alive(k8s, (JOBS, ns, job(s))) for s, ns in SILO_NS.items() if s != SILO), what="other silos' Jobs")
    await eventually(lambda: silo_status(k8s).get("ranksReady") == "0/2", what="0/2 ranks")

    rank0 = await post_rank_pod(k8s, 0, jobset, **READY)
    await post_rank_pod(k8s, 1, jobset, **READY)
    await set_jobset_status(k8s, name, restarts=0, replicatedJobsStatus=[
        {"name": "rank", "ready": 1, "succeeded": 0, "failed": 0, "active": 1, "suspended": 0}])
    await eventually(lambda: silo_status(k8s).get("ranksReady") == "2/2" and silo_status(k8s)["phase"] == "Running", what="2/2 ranks")

    await set_pod_status(k8s, SILO_NAMESPACE, rank0, phase="Failed", conditions=[], containerStatuses=[
        {"name": "silo", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}])
    await set_jobset_status(k8s, name, restarts=1)
    await eventually(lambda: silo_status(k8s).get("restarts") == 1 and silo_status(k8s).get("ranksReady") == "1/2", what="restart")
    assert (silo_status(k8s)["exitCode"], silo_status(k8s)["reason"]) == (137, "OOMKilled")
    assert raw(k8s, (CR, NS, OWNER.name))["status"]["silosReady"] == "1/3"  # the JobSet's silo runs; the other Jobs have no pods yet

    # The group used up its restarts: JobSet marks itself Failed, and so does the silo, with the failing rank's exit code.
    await set_jobset_status(k8s, name, restarts=4, terminalState="Failed",
                            conditions=[{"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "jobset failed"}])
    await eventually(lambda: silo_status(k8s).get("phase") == "Failed", what="the silo Failed")
    assert (silo_status(k8s)["restarts"], silo_status(k8s)["exitCode"], silo_status(k8s)["reason"]) == (4, 137, "OOMKilled")
    await eventually(lambda: {c["type"]: c for c in status(k8s)["conditions"]}["Degraded"]["reason"] == "SiloFailed", what="Degraded")
    degraded = {c["type"]: c for c in status(k8s)["conditions"]}["Degraded"]  # minSilos 2 of 3: the federation goes on
    assert degraded["status"] == "True" and "silo hospital-a failed (OOMKilled, exit code 137)" in degraded["message"]
    assert status(k8s)["phase"] != "Failed"



class NoJobSetApi:
    """A Kube where every silo consented and nothing exists yet, but the JobSet API is not served (no CRD: 404)."""

    def __init__(self):
        self.written: list[str] = []

    async def list(self, api_version, kind, namespace, selector=None):
        silo = next(s for s in EXAMPLE["spec"]["silos"] if s["namespace"] == namespace)
        return [membership(silo)] if kind == "FederationMembership" else []

    async def get(self, obj):
        return None

    async def apply(self, obj, uid):
        path = object_path(obj)
        if obj["kind"] == "JobSet":
            raise ApiError("POST", path.rsplit("/", 1)[0], 404, b'{"message": "the server could not find the requested resource"}')
        self.written.append(obj["kind"])
        return "created"


async def test_without_the_jobset_crd_the_status_says_so():
    kube = NoJobSetApi()
    memo = kopf.Memo(kube=kube, site=Site(multi_node="jobset"))
    patch, meta = kopf.Patch(), {"name": OWNER.name, "namespace": OWNER.namespace, "uid": OWNER.uid, "generation": 1}
    assert not await handlers.admit_and_apply(memo, OWNER, FederatedFinetuneSpec.model_validate(two_node_spec()), meta, {}, patch)
    condition = patch["status"]["conditions"][0]
    assert (condition["type"], condition["status"], condition["reason"]) == ("Admitted", "False", "JobSetMissing")
    assert "jobset.x-k8s.io/v1alpha2" in condition["message"] and "docs/deploy.md" in condition["message"]


class Discovery:
    """A Kube whose API discovery answers from a list, counting the questions."""

    def __init__(self, *answers):
        self.answers, self.asked = list(answers), 0

    async def serves(self, api_version, plural):
        self.asked += 1
        assert (api_version, plural) == ("jobset.x-k8s.io/v1alpha2", "jobsets")
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_the_jobset_answer_is_kept_once_yes_and_asked_again_while_no():
    memo = kopf.Memo(kube=Discovery(False, ApiError("GET", "/apis/jobset.x-k8s.io/v1alpha2", 403, b"{}"), True))
    assert not await handlers.jobset_api_served(memo) and memo.jobset_api is False
    assert not await handlers.jobset_api_served(memo)  # a refusal of discovery: taken as not served
    assert await handlers.jobset_api_served(memo) and await handlers.jobset_api_served(memo)
    assert memo.kube.asked == 3  # the yes is kept
