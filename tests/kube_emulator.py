"""kmock's KubernetesEmulator with the API-server behaviour kopf relies on, and the kinds we use.

Stock kmock 0.8 stores bodies verbatim and its watch snapshot races with its event bus.
This subclass (1) stamps uid, namespace, creationTimestamp and a resourceVersion that
changes on every write, answering a failed JSON-patch ``test`` with 422 as the API server
does; (2) subscribes to the event bus atomically with the watch's snapshot and replays
only objects newer than the LIST the client started from; (3) honours equality-based
``labelSelector`` terms (``k=v,k2=v2``) on LIST, which kmock ignores; (4) honours the optimistic
concurrency the operator relies on for "touch only what it owns": a merge patch carrying
``metadata.resourceVersion`` fails with 409 when the object has changed since, and a DELETE's
``preconditions`` (uid, resourceVersion) fail with 409 when they do not match (as the API server
does); (5) answers 403 for built-in kinds in the namespaces listed in ``forbidden`` (a namespace
without the operator's RoleBinding). Not modelled otherwise: RBAC, admission, server-side apply, garbage collection of owner references.
"""

from __future__ import annotations

import datetime
import uuid

import jsonpatch
import kmock

VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}
CR = kmock.resource("fedshield.io/v1alpha1/federatedfinetunes")
UNLEARNING_CR = kmock.resource("fedshield.io/v1alpha1/federatedunlearnings")
JOBS = kmock.resource("batch/v1/jobs")
PODS = kmock.resource("v1/pods")
DEPLOYMENTS = kmock.resource("apps/v1/deployments")
SERVICES = kmock.resource("v1/services")
CONFIGMAPS = kmock.resource("v1/configmaps")
PVCS = kmock.resource("v1/persistentvolumeclaims")
NETWORKPOLICIES = kmock.resource("networking.k8s.io/v1/networkpolicies")
MEMBERSHIPS = kmock.resource("fedshield.io/v1alpha1/federationmemberships")
WRITES = ("POST", "PUT", "PATCH", "DELETE")


class Emulator(kmock.KubernetesEmulator):
    _rv = 0
    forbidden: frozenset[str] = frozenset()  # namespaces where every request for a built-in kind is 403 (no RoleBinding there)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _live(self, request) -> dict | None:
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key].last.raw
        return None

    def _precondition(self, request) -> None:
        """409 when a patch's resourceVersion or a delete's preconditions do not match the stored object."""
        data, live = request.data, self._live(request)
        if live is None or not isinstance(data, dict):
            return
        meta = live.get("metadata", {})
        if request.action == kmock.action.UPDATE:
            wanted = {"resourceVersion": (data.get("metadata") or {}).get("resourceVersion")}
        else:
            wanted = dict(data.get("preconditions") or {})
        for key, value in wanted.items():
            if value is not None and meta.get(key) != value:
                raise kmock.KubernetesError(status=409, reason="Conflict", message=f"precondition failed: {key} is {meta.get(key)!r}, not {value!r}")

    async def _handle(self, request):
        action, data = request.action, request.data
        if request.namespace in self.forbidden and request.resource is not None and request.resource.group != "fedshield.io":
            raise kmock.KubernetesError(status=403, reason="Forbidden", message=f"no RoleBinding in namespace {request.namespace}")
        if action in (kmock.action.UPDATE, kmock.action.DELETE) and request.name:
            self._precondition(request)
        if action == kmock.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.namespace:
                meta.setdefault("namespace", request.namespace)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
            meta.setdefault("generation", 1)
            meta["resourceVersion"] = self._next_rv()
        elif action == kmock.action.UPDATE and request.name:
            if isinstance(data, dict):
                data.setdefault("metadata", {})["resourceVersion"] = self._next_rv()
            elif isinstance(data, list):
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": self._next_rv()})
        elif action == kmock.action.DELETE and request.name:
            key = (request.resource, request.namespace, request.name)
            if key in self.objects and not self.objects[key].deleted:
                obj = self.objects[key]
                obj["metadata"] = {**obj.last.raw.get("metadata", {}), "resourceVersion": self._next_rv()}
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from exc

    async def _serve_list(self, request):
        result = await super()._serve_list(request)
        result["metadata"] = {"resourceVersion": str(self._rv)}
        terms = [t.split("=", 1) for t in (request.params.get("labelSelector") or "").split(",") if "=" in t and "!" not in t]
        if terms:
            result["items"] = [o for o in result["items"]
                               if all((o.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in terms)]
        return result

    @staticmethod
    def _selected(request, namespace, name) -> bool:
        return (request.namespace is None or namespace == request.namespace) and (request.name is None or name == request.name)

    async def _serve_watch(self, request):
        yield b""
        since = request.params.get("resourceVersion", "")
        since = int(since) if since.isdigit() else 0
        bus = self._buses[request.resource]
        async with self._lock:
            mark = await bus.mark()
            replay = [obj.raw for (res, ns, name), obj in self.objects.items()
                      if res == request.resource and not obj.deleted and self._selected(request, ns, name)
                      and int(obj.get("metadata", {}).get("resourceVersion") or 0) > since]
        try:
            for raw in replay:
                yield {"type": "ADDED", "object": raw}
            async for event in bus.stream(since=mark):
                meta = event.get("object", {}).get("metadata", {})
                if self._selected(request, meta.get("namespace"), meta.get("name")):
                    yield event
        finally:
            await bus.unmark(mark)


def declare_resources(k8s: kmock.KubernetesEmulator) -> None:
    """Discovery for kopf's backbone (CRDs, namespaces, events), our CR, and every child kind."""
    k8s.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = dict(
        kind="CustomResourceDefinition", singular="customresourcedefinition", namespaced=False, verbs=VERBS)
    k8s.resources["v1/namespaces"] = dict(kind="Namespace", singular="namespace", namespaced=False, verbs=VERBS)
    k8s.resources["v1/events"] = dict(kind="Event", singular="event", namespaced=True, verbs=VERBS)
    k8s.resources[CR] = dict(kind="FederatedFinetune", singular="federatedfinetune", namespaced=True, verbs=VERBS, subresources={"status"})
    k8s.resources[UNLEARNING_CR] = dict(kind="FederatedUnlearning", singular="federatedunlearning", namespaced=True, verbs=VERBS,
                                        subresources={"status"})
    k8s.resources[MEMBERSHIPS] = dict(kind="FederationMembership", singular="federationmembership", namespaced=True, verbs=VERBS)
    for res, kind in ((JOBS, "Job"), (PODS, "Pod"), (DEPLOYMENTS, "Deployment"), (SERVICES, "Service"),
                      (CONFIGMAPS, "ConfigMap"), (PVCS, "PersistentVolumeClaim"), (NETWORKPOLICIES, "NetworkPolicy")):
        k8s.resources[res] = dict(kind=kind, singular=kind.lower(), namespaced=True, verbs=VERBS, subresources={"status"})


def writes_in(k8s: kmock.KubernetesEmulator, namespace: str) -> list[str]:
    """Every write request the emulator received for objects in ``namespace`` (method and path)."""
    return [f"{getattr(r.method, 'value', r.method)} {r.url.path}" for r in k8s if getattr(r.method, "value", r.method) in WRITES
            and f"/namespaces/{namespace}/" in r.url.path]
