"""The real kopf operator's test harness: the example CR, kmock's emulator, a fake aggregator and polling helpers."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator
from pathlib import Path

import kopf
import yaml

from fedshield.operator import handlers  # noqa: F401  (registers the handlers in kopf's default registry)
from fedshield.operator.kube import Kube
from fedshield.operator.manifests import Owner, silo_job_name
from fedshield.wire.messages import Status
from support.aggregator_status import status_of
from support.kube_emulator import (
    CR,
    MERGE,
)

EXAMPLE = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "federatedfinetune.yaml").read_text())
NS, NAME = EXAMPLE["metadata"]["namespace"], EXAMPLE["metadata"]["name"]
SILO_NS = {s["name"]: s["namespace"] for s in EXAMPLE["spec"]["silos"]}
CR_PATH = f"/apis/fedshield.io/v1alpha1/namespaces/{NS}/federatedfinetunes"
UID = "0b9c7a34-1111-2222-3333-444455556666"  # the emulator keeps a uid given at creation: child names are known in advance
OWNER = Owner(NAME, NS, UID)
emulator_urls: list[str] = []  # where the emulator listens, for the login handler (the last one started)


def job(silo: str, owner: Owner = OWNER) -> str:
    return silo_job_name(owner, silo)


def membership(silo: dict, federations=((NS, NAME),), name: str = "fedshield", **spec) -> dict:
    """A FederationMembership admitting exactly what ``silo`` (an entry of spec.silos) uses."""
    body = {"federations": [{"namespace": n, "name": f} for n, f in federations], "silos": [silo["name"]],
            "imagePrefixes": ["fedshield/fedshield:"],
            "secrets": [silo["keySecret"]] + ([silo["tls"]["secretName"]] if silo.get("tls") else []),
            "persistentVolumeClaims": [silo["datasetVolume"]["claimName"], "base-models"],
            "tolerations": silo.get("tolerations", []), "limits": {"gpus": 2, "memory": "32Gi"}}
    body.update(spec)
    return {"apiVersion": "fedshield.io/v1alpha1", "kind": "FederationMembership", "metadata": {"name": name, "namespace": silo["namespace"]},
            "spec": body}


async def consent(k8s, silos=None, **kw) -> None:
    """Each organisation's admin consents (by default: every silo of the example, to this federation only)."""
    for silo in silos or EXAMPLE["spec"]["silos"]:
        body = membership(silo, **kw)
        response = await k8s.post(f"/apis/fedshield.io/v1alpha1/namespaces/{silo['namespace']}/federationmemberships", json=body)
        assert response.status == 200, await response.text()


@kopf.on.login()
def login(**_):
    return kopf.ConnectionInfo(server=emulator_urls[-1])


class FakeAggregator:
    """What the aggregator's /v1/status would say; the test moves it along."""

    def __init__(self):
        self.status: dict | None = None
        self.calls = 0

    async def __call__(self, url: str) -> Status | None:
        self.calls += 1
        return status_of(copy.deepcopy(self.status))


class NotKopfTasks:
    """kopf waits for (then cancels) every task created after it started; only its own matter."""

    def __contains__(self, task: asyncio.Task) -> bool:
        code = getattr(task.get_coro(), "cr_code", None)
        return "/kopf/" not in getattr(code, "co_filename", "")


def kmock_server(handler):
    import kmock

    return kmock.Server(handler)


async def eventually(check, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (KeyError, TypeError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.05)


def alive(k8s, key) -> bool:
    return key in k8s.objects and not k8s.objects[key].deleted


def raw(k8s, key) -> dict:
    return k8s.objects[key].last.raw


def status(k8s) -> dict:
    return raw(k8s, (CR, NS, NAME)).get("status", {})


async def create_cr(k8s, spec: dict | None = None, namespace: str = NS, uid: str = UID) -> None:
    body = {"apiVersion": "fedshield.io/v1alpha1", "kind": "FederatedFinetune", "metadata": {"name": NAME, "namespace": namespace, "uid": uid},
            "spec": spec or EXAMPLE["spec"]}
    response = await k8s.post(f"/apis/fedshield.io/v1alpha1/namespaces/{namespace}/federatedfinetunes", json=body)
    assert response.status == 200, await response.text()


async def set_job_status(k8s, silo: str, **job_status) -> None:
    response = await k8s.patch(f"/apis/batch/v1/namespaces/{SILO_NS[silo]}/jobs/{job(silo)}/status", json={"status": job_status}, headers=MERGE)
    assert response.status == 200, await response.text()


@contextlib.asynccontextmanager
async def running_operator(k8s, **memo) -> AsyncIterator[Kube]:
    """The real kopf operator (the handlers in kopf's default registry) against the emulator, with ``memo``."""
    url = str(k8s.url).rstrip("/")
    emulator_urls.append(url)
    kube = Kube.for_url(url)
    stop, ready = asyncio.Event(), asyncio.Event()
    tasks = await kopf.spawn_tasks(standalone=True, clusterwide=True, stop_flag=stop, ready_flag=ready,
                                   memo=kopf.Memo(kube=kube, **memo))
    runner = asyncio.create_task(kopf.run_tasks(tasks, ignored=NotKopfTasks()))
    await asyncio.wait_for(ready.wait(), timeout=30)
    try:
        yield kube
    finally:
        stop.set()
        await asyncio.wait_for(runner, timeout=30)  # a loaded machine stops kopf slowly
        await kube.close()


async def set_pod_status(k8s, namespace: str, name: str, **pod_status) -> None:
    """Merge-patch a pod's status in the emulated API server, as the kubelet would."""
    response = await k8s.patch(f"/api/v1/namespaces/{namespace}/pods/{name}/status", json={"status": pod_status}, headers=MERGE)
    assert response.status == 200, await response.text()
