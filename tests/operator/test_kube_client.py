"""The operator's Kubernetes client (the kubernetes package) against the emulator: server-side apply and field
ownership, the status race a timer used to lose, a rotated service-account token, and an emulator that refuses what
the API server refuses."""

from __future__ import annotations

import copy
import datetime as dt
import http.server
import json
import ssl
import threading
import types

import kmock
import kopf
import pytest
from kubernetes.config import incluster_config
from support.kube_emulator import CONFIGMAPS, CR, MERGE, Emulator, declare_resources
from support.operator_harness import CR_PATH, EXAMPLE, NAME, NS, UID, FakeAggregator

from fedshield.operator import handlers
from fedshield.operator.kube import APPLY, FIELD_MANAGER, FieldConflict, Kube, in_cluster_configuration
from fedshield.operator.manifests import OWNER_UID_LABEL
from fedshield.security.certs import create_ca, issue_server

CM_PATH = f"/api/v1/namespaces/{NS}/configmaps"
OWNER_UID = "7d1a6b0e-0000-4000-8000-000000000001"


@pytest.fixture
async def k8s():
    async with Emulator() as handler, kmock.Server(handler):
        declare_resources(handler)
        yield handler


@pytest.fixture
async def kube(k8s):
    client = Kube.for_url(str(k8s.url).rstrip("/"))
    yield client
    await client.close()


def configmap(data: dict, name: str = "plan") -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS, "labels": {OWNER_UID_LABEL: OWNER_UID}},
            "data": data}


def live(k8s, name: str = "plan") -> dict:
    return k8s.objects[CONFIGMAPS, NS, name].last.raw


def writes(k8s) -> list:
    return [r for r in k8s if getattr(r.method, "value", r.method) in ("POST", "PATCH", "PUT", "DELETE")]


def managers(k8s, name: str = "plan") -> dict:
    return {(m["manager"], m["operation"]): m["fieldsV1"] for m in k8s.managed_fields((CONFIGMAPS, NS, name))}


# --- server-side apply -------------------------------------------------------------------------

async def test_create_then_an_apply_without_change_writes_nothing(k8s, kube):
    assert await kube.apply(configmap({"k": "v"}), OWNER_UID) == "created"
    created = writes(k8s)
    assert [(str(r.method.value), r.params.get("fieldManager")) for r in created] == [("POST", FIELD_MANAGER)]
    version = live(k8s)["metadata"]["resourceVersion"]
    assert await kube.apply(configmap({"k": "v"}), OWNER_UID) == "unchanged"
    assert writes(k8s) == created and live(k8s)["metadata"]["resourceVersion"] == version


async def test_a_changed_mutable_field_is_applied_under_our_field_manager(k8s, kube):
    await kube.apply(configmap({"k": "v"}), OWNER_UID)
    version = int(live(k8s)["metadata"]["resourceVersion"])
    assert await kube.apply(configmap({"k": "w"}), OWNER_UID) == "patched"
    assert live(k8s)["data"] == {"k": "w"} and int(live(k8s)["metadata"]["resourceVersion"]) == version + 1  # one write
    applies = [r for r in writes(k8s) if r.headers.get("Content-Type") == APPLY]
    assert applies and all(r.params["fieldManager"] == FIELD_MANAGER for r in applies)
    # The first change met only our own create's fields (fedshield-operator, Update): forced over ourselves, once.
    assert [r.params.get("force") for r in applies] == [None, "true"]
    assert managers(k8s)[(FIELD_MANAGER, "Apply")]["f:data"] == {"f:k": {}}
    assert "f:data" not in managers(k8s).get((FIELD_MANAGER, "Update"), {})
    # From now on we alone hold those fields: a change is a single, unforced apply.
    before = len(writes(k8s))
    assert await kube.apply(configmap({"k": "x"}), OWNER_UID) == "patched"
    assert len(writes(k8s)) == before + 1 and "force" not in writes(k8s)[-1].params and live(k8s)["data"] == {"k": "x"}


async def test_a_field_another_manager_changed_is_reported_not_forced(k8s, kube):
    await kube.apply(configmap({"k": "v"}), OWNER_UID)
    await kube.apply(configmap({"k": "w"}), OWNER_UID)
    response = await k8s.patch(f"{CM_PATH}/plan", json={"data": {"k": "edited"}}, headers=MERGE, params={"fieldManager": "kubectl-edit"})
    assert response.status == 200
    forced_before = [r for r in writes(k8s) if r.params.get("force")]
    with pytest.raises(FieldConflict) as caught:
        await kube.apply(configmap({"k": "w"}), OWNER_UID)
    assert 'conflict with "kubectl-edit"' in str(caught.value) and ".data.k" in str(caught.value)
    assert live(k8s)["data"] == {"k": "edited"}  # theirs, kept
    assert [r for r in writes(k8s) if r.params.get("force")] == forced_before  # never forced over another manager


async def test_an_object_changed_between_our_read_and_our_apply_is_retried_not_written(k8s, kube):
    await kube.apply(configmap({"k": "v"}), OWNER_UID)
    read = kube.get

    async def read_then_someone_writes(obj):
        found = await read(obj)
        await k8s.patch(f"{CM_PATH}/plan", json={"metadata": {"annotations": {"a": "b"}}}, headers=MERGE)
        return found

    kube.get = read_then_someone_writes
    assert await kube.apply(configmap({"k": "w"}), OWNER_UID) == "retry"
    assert live(k8s)["data"] == {"k": "v"}


async def test_a_name_taken_by_another_object_is_left_untouched(k8s, kube):
    squatter = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "plan", "namespace": NS}, "data": {"mine": "1"}}
    assert (await k8s.post(CM_PATH, json=squatter)).status == 200
    assert await kube.apply(configmap({"k": "v"}), OWNER_UID) == "conflict"
    assert await kube.delete(configmap({}), OWNER_UID) == "not-owned"
    assert live(k8s)["data"] == {"mine": "1"} and [getattr(r.method, "value", r.method) for r in writes(k8s)] == ["POST"]


# --- the emulator refuses what the API server refuses -----------------------------------------

async def test_the_emulator_refuses_what_the_api_server_refuses(k8s, kube):
    await kube.apply(configmap({"k": "v"}), OWNER_UID)
    path = f"{CM_PATH}/plan"
    body = configmap({"k": "w"})
    assert (await k8s.patch(path, json={"data": {}})).status == 415  # application/json is no patch type
    assert (await k8s.patch(path, json={"data": {}}, headers={"Content-Type": "application/strategic-merge-patch+json"})).status == 415
    assert (await k8s.patch(path, json=body, headers={"Content-Type": APPLY})).status == 400  # apply needs a fieldManager
    assert (await k8s.patch(path, json={"data": {}}, headers=MERGE, params={"force": "true"})).status == 400
    renamed = copy.deepcopy(body)
    renamed["metadata"]["name"] = "other"
    assert (await k8s.patch(path, json=renamed, headers={"Content-Type": APPLY}, params={"fieldManager": "x"})).status == 400
    stale = {"metadata": {"resourceVersion": "0"}, "data": {"k": "stale"}}
    response = await k8s.patch(path, json=stale, headers=MERGE)
    assert response.status == 409 and (await response.json())["reason"] == "Conflict"
    assert live(k8s)["data"] == {"k": "v"}


async def test_apply_creates_what_is_absent_and_a_repeated_apply_is_no_write(k8s):
    body = configmap({"k": "v"}, name="applied")
    params = {"fieldManager": "someone"}
    response = await k8s.patch(f"{CM_PATH}/applied", json=body, headers={"Content-Type": APPLY}, params=params)
    assert response.status == 200 and live(k8s, "applied")["data"] == {"k": "v"}
    version = live(k8s, "applied")["metadata"]["resourceVersion"]
    assert (await k8s.patch(f"{CM_PATH}/applied", json=body, headers={"Content-Type": APPLY}, params=params)).status == 200
    assert live(k8s, "applied")["metadata"]["resourceVersion"] == version
    # A field the manager stops applying, held by no one else, is removed.
    del body["data"]
    body["data"] = {"j": "1"}
    assert (await k8s.patch(f"{CM_PATH}/applied", json=body, headers={"Content-Type": APPLY}, params=params)).status == 200
    assert live(k8s, "applied")["data"] == {"j": "1"}


async def test_the_status_subresource_and_the_main_resource_each_ignore_the_other(k8s):
    cr = {"apiVersion": "fedshield.io/v1alpha1", "kind": "FederatedFinetune", "metadata": {"name": NAME, "namespace": NS},
          "spec": {"x": 1}}
    assert (await k8s.post(CR_PATH, json=cr)).status == 200
    assert (await k8s.patch(f"{CR_PATH}/{NAME}", json={"spec": {"x": 2}, "status": {"phase": "Forged"}}, headers=MERGE)).status == 200
    assert (await k8s.patch(f"{CR_PATH}/{NAME}/status", json={"spec": {"x": 3}, "status": {"phase": "Running"}}, headers=MERGE)).status == 200
    obj = k8s.objects[CR, NS, NAME].last.raw
    assert obj["spec"] == {"x": 2} and obj["status"] == {"phase": "Running"}


# --- the status race: a timer's tick against a newer refusal ------------------------------------

class RefusalLandsFirst(Emulator):
    """Runs ``refuse`` once, just before the first status write for the CR reaches the store (the window a timer's
    read-then-write leaves open, however narrow)."""

    refuse = None

    async def _handle(self, request):
        if (self.refuse is not None and request.subresource == "status" and request.name == NAME
                and getattr(request.method, "value", request.method) == "PATCH"):
            refuse, self.refuse = self.refuse, None
            await refuse()
        return await super()._handle(request)


ADMITTED = {"phase": "Pending", "observedGeneration": 1, "conditions": [
    {"type": "Admitted", "status": "True", "reason": "Admitted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z",
     "observedGeneration": 1}]}
REFUSAL = {"phase": "Failed", "observedGeneration": 2, "conditions": [
    {"type": "Failed", "status": "True", "reason": "ImmutableFieldChanged", "message": "spec.lora cannot change after creation",
     "lastTransitionTime": "2026-01-01T00:00:01Z", "observedGeneration": 2}]}


async def _tick_racing(change) -> tuple[RefusalLandsFirst, dict]:
    """One status tick of an admitted generation-1 CR, with ``change(k8s)`` landing just before its status write
    (and kopf's own write of whatever the handler left in its patch, as kopf does after a handler returns)."""
    k8s = RefusalLandsFirst()
    async with k8s, kmock.Server(k8s):
        declare_resources(k8s)
        kube = Kube.for_url(str(k8s.url).rstrip("/"))
        body = {"apiVersion": "fedshield.io/v1alpha1", "kind": "FederatedFinetune",
                "metadata": {"name": NAME, "namespace": NS, "uid": UID}, "spec": EXAMPLE["spec"]}
        assert (await k8s.post(CR_PATH, json=body)).status == 200
        assert (await k8s.patch(f"{CR_PATH}/{NAME}/status", json={"status": ADMITTED}, headers=MERGE)).status == 200
        tick = copy.deepcopy(k8s.objects[CR, NS, NAME].last.raw)  # what the timer's tick sees: generation 1, admitted
        k8s.refuse = lambda: change(k8s)
        patch = kopf.Patch()
        memo = kopf.Memo(kube=kube, aggregator_status=FakeAggregator())
        await handlers.watch_progress(body=tick, meta=tick["metadata"], spec=tick["spec"], status=tick["status"], patch=patch, memo=memo)
        if patch.get("status"):  # what kopf writes after the handler returns (a merge patch, unconditional)
            assert (await k8s.patch(f"{CR_PATH}/{NAME}/status", json={"status": dict(patch["status"])}, headers=MERGE)).status == 200
        await kube.close()
        assert k8s.refuse is None, "the tick wrote no status at all: the race was not exercised"
        return k8s, k8s.objects[CR, NS, NAME].last.raw["status"]


async def test_a_stale_status_tick_never_overwrites_a_newer_refusal():
    async def reconcile_refuses_generation_2(k8s):
        changed = {"spec": {"lora": {"r": 64}}, "metadata": {"generation": 2}}
        assert (await k8s.patch(f"{CR_PATH}/{NAME}", json=changed, headers=MERGE)).status == 200
        assert (await k8s.patch(f"{CR_PATH}/{NAME}/status", json={"status": REFUSAL}, headers=MERGE)).status == 200

    _, final = await _tick_racing(reconcile_refuses_generation_2)
    assert final["observedGeneration"] == 2 and final["conditions"][0]["reason"] == "ImmutableFieldChanged", final


async def test_a_status_tick_that_met_an_unrelated_write_decides_again_and_writes():
    async def kopf_annotates(k8s):
        note = {"metadata": {"annotations": {"fedshield.io/last-handled-configuration": "{}"}}}
        assert (await k8s.patch(f"{CR_PATH}/{NAME}", json=note, headers=MERGE)).status == 200

    k8s, final = await _tick_racing(kopf_annotates)
    status_writes = [r for r in k8s if r.subresource == "status" and getattr(r.method, "value", r.method) == "PATCH"
                     and not r.headers.get("User-Agent", "").startswith("kmock/")]  # the operator's, not the test's
    assert len(status_writes) == 2  # the first met 409, the second was decided on the fresh object
    assert final["observedGeneration"] == 1 and {c["type"] for c in final["conditions"]} >= {"Admitted", "Ready"}, final


# --- a rotated service-account token -------------------------------------------------------------

class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):  # noqa: N802
        self.seen.append(self.headers.get("Authorization", ""))
        payload = json.dumps(configmap({"k": "v"})).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_):
        pass


@pytest.fixture
def tls_api_server(tmp_path):
    """A TLS endpoint standing in for the API server (in-cluster config is https only): it records each bearer token."""
    ca = create_ca(tmp_path)
    server_cert = issue_server(tmp_path, ("127.0.0.1",))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_cert.cert, server_cert.key)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    _RecordingHandler.seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], ca.cert, _RecordingHandler.seen
    httpd.shutdown()
    httpd.server_close()


async def test_a_rotated_service_account_token_is_picked_up_without_restart(tmp_path, tls_api_server, monkeypatch):
    port, ca, seen = tls_api_server
    token = tmp_path / "token"
    token.write_text("token-1")
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}
    kube = Kube.from_configuration(in_cluster_configuration(str(token), str(ca), environ))
    await kube.get(configmap({}))
    token.write_text("token-2")  # the kubelet rotates the projected token in place
    await kube.get(configmap({}))  # within the library's minute: the token read last
    later = dt.datetime.now() + dt.timedelta(minutes=1, seconds=1)

    class _Later(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return later

    monkeypatch.setattr(incluster_config, "datetime", types.SimpleNamespace(datetime=_Later, timedelta=dt.timedelta))
    await kube.get(configmap({}))
    assert [s.lower() for s in seen] == ["bearer token-1", "bearer token-1", "bearer token-2"]
    await kube.close()


async def test_the_client_has_no_path_to_secrets(kube):
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fedshield-keys", "namespace": NS}}
    for call in (kube.get(secret), kube.apply(secret, OWNER_UID), kube.delete(secret, OWNER_UID), kube.list("v1", "Secret", NS)):
        with pytest.raises(ValueError, match="does not manage v1 Secret"):
            await call
