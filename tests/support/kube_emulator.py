"""kmock's KubernetesEmulator with the API-server behaviour kopf and our client rely on, and the kinds we use.

Stock kmock 0.8 stores bodies verbatim and its watch snapshot races with its event bus.
This subclass (1) stamps uid, namespace, creationTimestamp and a resourceVersion that
changes on every write, answering a failed JSON-patch ``test`` with 422 as the API server
does; (2) subscribes to the event bus atomically with the watch's snapshot and replays
only objects newer than the LIST the client started from; (3) honours equality-based
``labelSelector`` terms (``k=v,k2=v2``) on LIST, which kmock ignores; (4) honours optimistic
concurrency: a patch (merge or apply) carrying ``metadata.resourceVersion`` fails with 409
when the object has changed since, and a DELETE's ``preconditions`` (uid, resourceVersion)
fail with 409 when they do not match; (5) answers 403 for built-in kinds in the namespaces
listed in ``forbidden`` (a namespace without the operator's RoleBinding); (6) refuses patch
content types it does not know (415: JSON patch, merge patch and apply only; strategic merge
is not modelled), an apply without ``fieldManager`` or naming another object (400), and
``force`` on a non-apply patch (400); (7) implements server-side apply with managed fields
per (manager, operation) kept beside the object (``managed_fields``): an apply changing a
field another manager holds is refused with 409 and ``FieldManagerConflict`` causes unless
forced, a field its only applier stops applying is removed, an apply that changes nothing
writes nothing, an apply to an absent object creates it, and any other write gives its
manager (``fieldManager``, else the User-Agent's product) the fields it changed; (8) for
kinds in ``with_status``, ignores ``status`` on the main endpoint and everything else on
``/status``. Not modelled: list merge keys (lists are atomic), managedFields inside the
objects served, generation bumps, defaulting, field immutability, RBAC, admission,
garbage collection of owner references.
"""

from __future__ import annotations

import copy
import datetime
import uuid

import aiohttp.web
import jsonpatch
import kmock
import yaml

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
JOBSETS = kmock.resource("jobset.x-k8s.io/v1alpha2/jobsets")
TRAINJOBS = kmock.resource("trainer.kubeflow.org/v1alpha1/trainjobs")
WRITES = ("POST", "PUT", "PATCH", "DELETE")
MERGE = {"Content-Type": "application/merge-patch+json"}  # what kubectl patch --type=merge sends


JSON_PATCH, MERGE_PATCH, APPLY_PATCH = "application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, APPLY_PATCH)  # strategic merge is not modelled: 415 (as for custom resources)
UNTRACKED = {("apiVersion",), ("kind",), ("status",)} | {("metadata", k) for k in (
    "name", "namespace", "uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "deletionTimestamp")}
_MISSING = object()


def leaves(obj, prefix: tuple = ()) -> dict[tuple, object]:
    """Field path -> value for every leaf the managers track (lists are atomic, as for lists without merge keys)."""
    if isinstance(obj, dict) and obj:
        out: dict[tuple, object] = {}
        for key, value in obj.items():
            out.update(leaves(value, prefix + (key,)))
        return out
    return {} if any(prefix[:len(u)] == u for u in UNTRACKED) or not prefix else {prefix: obj}


def value_at(obj, path: tuple):
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def set_at(obj: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        obj = obj.setdefault(key, {})
    obj[path[-1]] = copy.deepcopy(value)


def drop_at(obj: dict, path: tuple) -> None:
    """Remove a leaf, and the maps it leaves empty."""
    parents = [obj]
    for key in path[:-1]:
        if not isinstance(parents[-1].get(key), dict):
            return
        parents.append(parents[-1][key])
    parents[-1].pop(path[-1], None)
    for parent, key in zip(reversed(parents[:-1]), reversed(path[:-1]), strict=False):
        if parent[key]:
            break
        del parent[key]


def overlaps(a: tuple, b: tuple) -> bool:
    return a[:len(b)] == b or b[:len(a)] == a


def fields_v1(paths) -> dict:
    """The FieldsV1 form of a set of paths: {"f:spec": {"f:replicas": {}}}."""
    out: dict = {}
    for path in sorted(paths):
        node = out
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return out


def merge_diff(old: dict, new: dict) -> dict:
    """The JSON merge patch that turns ``old`` into ``new`` (None removes a key)."""
    patch = {k: None for k in old if k not in new}
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            sub = merge_diff(old[key], value)
            if sub:
                patch[key] = sub
        elif old.get(key, _MISSING) != value:
            patch[key] = value
    return patch


def _header(request, name: str) -> str:
    return next((v for k, v in (request.headers or {}).items() if k.lower() == name), "")


def _amend(request, **fields):
    """Rewrite what kmock stores for this request (kmock matches its reactions on the request object itself)."""
    for name, value in fields.items():
        object.__setattr__(request, name, value)
    return request


def _error(status: int, reason: str, message: str, causes: list[dict] | None = None) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={"causes": causes} if causes else None)


class Emulator(kmock.KubernetesEmulator):
    _rv = 0
    forbidden: frozenset[str] = frozenset()  # namespaces where every request for a built-in kind is 403 (no RoleBinding there)
    with_status: set = set()  # resources whose status is a subresource (set by declare_resources)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.managers: dict[tuple, dict[tuple[str, str], set[tuple]]] = {}  # object key -> (manager, operation) -> paths
        self.with_status = set()

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
                kind = request.resource.plural if request.resource else "object"
                message = (f'Operation cannot be fulfilled on {kind} "{request.name}": the object has been modified; please apply your '
                           f"changes to the latest version and try again (precondition: {key} is {meta.get(key)!r}, not {value!r})")
                raise _error(409, "Conflict", message)

    @staticmethod
    def _manager(request) -> str:
        """The field manager: ?fieldManager=, else the User-Agent's product (as the API server derives it)."""
        return request.params.get("fieldManager") or (_header(request, "user-agent").split("/", 1)[0] or "unknown")

    def _check_patch(self, request) -> str:
        """The patch type, after refusing what the API server refuses (415, 400)."""
        content_type = _header(request, "content-type").split(";", 1)[0].strip().lower()
        if content_type not in PATCH_TYPES:
            raise _error(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted media types "
                                                      f"include: {', '.join(PATCH_TYPES)} (not modelled: {content_type or 'none'})")
        if content_type != APPLY_PATCH and "force" in request.params:
            raise _error(400, "BadRequest", "force: Forbidden: may not be specified for non-apply patch")
        if content_type == APPLY_PATCH:
            if not request.params.get("fieldManager"):
                raise _error(400, "BadRequest", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: "
                                                "is required for apply patch")
            data = request.data
            if not isinstance(data, dict) or not data.get("apiVersion") or not data.get("kind"):
                raise _error(400, "BadRequest", "apply patches need apiVersion and kind")
            name = (data.get("metadata") or {}).get("name")
            if name != request.name:
                raise _error(400, "BadRequest", f"the name of the object ({name}) does not match the name on the URL ({request.name})")
        return content_type

    def _status_split(self, request, data):
        """A kind with a status subresource: its main endpoint ignores status, its /status endpoint all but status."""
        if request.resource not in self.with_status:
            return data
        on_status = request.subresource == "status"
        if isinstance(data, dict):
            return {"status": data["status"]} if on_status and "status" in data else (
                {} if on_status else {k: v for k, v in data.items() if k != "status"})
        if isinstance(data, list):
            is_status = lambda op: op.get("path", "") == "/status" or op.get("path", "").startswith("/status/")  # noqa: E731
            return [op for op in data if op.get("op") == "test" or is_status(op) == on_status]
        return data

    def _apply(self, request, key, live: dict, data: dict) -> dict:
        """Server-side apply, managedFields-lite: the new object, or 409 naming each field another manager holds."""
        manager, force = request.params["fieldManager"], request.params.get("force") == "true"
        me = (manager, "Apply")
        owners = self.managers.setdefault(key, {})
        applied = leaves(data)
        conflicts = [(other, path) for path, value in applied.items() if value_at(live, path) != value
                     for other, paths in owners.items() if other != me and any(overlaps(path, p) for p in paths)]
        if conflicts and not force:
            causes = [{"reason": "FieldManagerConflict", "message": f'conflict with "{m}"' + (" using " + live.get("apiVersion", "")
                       if op == "Update" else ""), "field": "." + ".".join(path)} for (m, op), path in conflicts]
            raise _error(409, "Conflict", f"Apply failed with {len(causes)} conflict{'s' if len(causes) > 1 else ''}: "
                                          + "; ".join(f"{c['message']}: {c['field']}" for c in causes), causes)
        new = copy.deepcopy(live)
        for (other, path) in conflicts:  # forced: the ownership moves to us
            owners[other] = {p for p in owners[other] if not overlaps(p, path)}
        for path in owners.get(me, set()) - set(applied):  # no longer applied, and no one else holds it: removed
            if not any(path in paths for other, paths in owners.items() if other != me):
                drop_at(new, path)
        for path, value in applied.items():
            set_at(new, path, value)
        owners[me] = set(applied)
        return new

    def _record_update(self, request, key, before: dict | None, after: dict) -> None:
        """A non-apply write: its manager takes every field it changed, and the others lose them."""
        old = leaves(before or {})
        changed = {p for p, v in leaves(after).items() if old.get(p, _MISSING) != v}
        owners = self.managers.setdefault(key, {})
        me = (self._manager(request), "Update")
        for other in owners:
            if other != me:
                owners[other] = {p for p in owners[other] if not any(overlaps(p, c) for c in changed)}
        owners[me] = owners.get(me, set()) | changed

    def managed_fields(self, key) -> list[dict]:
        """metadata.managedFields as the API server would render it for the object at ``key``."""
        return [{"manager": m, "operation": op, "fieldsType": "FieldsV1", "fieldsV1": fields_v1(paths)}
                for (m, op), paths in sorted(self.managers.get(key, {}).items()) if paths]

    async def _handle(self, request):
        action, data = request.action, request.data
        if request.namespace in self.forbidden and request.resource is not None and request.resource.group != "fedshield.io":
            raise kmock.KubernetesError(status=403, reason="Forbidden", message=f"no RoleBinding in namespace {request.namespace}")
        key = (request.resource, request.namespace, request.name)
        patch_type = None
        if action == kmock.action.UPDATE and request.name and getattr(request.method, "value", request.method) == "PATCH":
            if data is None and request.text and _header(request, "content-type").startswith(APPLY_PATCH):
                data = _amend(request, data=yaml.safe_load(request.text)).data  # YAML proper (JSON is YAML, parsed already)
            patch_type = self._check_patch(request)
        if action in (kmock.action.UPDATE, kmock.action.DELETE) and request.name:
            self._precondition(request)
        before = copy.deepcopy(self._live(request)) if request.name else None
        if action == kmock.action.UPDATE and request.name:
            data = self._status_split(request, data)
            if patch_type == APPLY_PATCH:
                if before is None:  # apply creates what is absent
                    new = {k: v for k, v in data.items()}
                    new["metadata"] = {**(data.get("metadata") or {}), "namespace": request.namespace}
                    new["metadata"].pop("resourceVersion", None)
                    self.managers[key] = {(request.params["fieldManager"], "Apply"): set(leaves(new))}
                    _amend(request, action=kmock.action.CREATE, data=new)
                    return await self._handle_stamped(request, key, record=False)
                owners_before = copy.deepcopy(self.managers.get(key, {}))
                new = self._apply(request, key, before, data)
                if new == before and self.managers.get(key) == owners_before:
                    return aiohttp.web.json_response(before)  # no change: no write, no event, same resourceVersion
                data = merge_diff(before, new)
            _amend(request, data=data)
        return await self._handle_stamped(request, key, record=patch_type != APPLY_PATCH, before=before)

    async def _handle_stamped(self, request, key, record: bool, before: dict | None = None):
        """Stamp uid, timestamps and resourceVersion, store (kmock), then record the writer's fields."""
        action, data = request.action, request.data
        if action == kmock.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.namespace:
                meta.setdefault("namespace", request.namespace)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            meta.setdefault("generation", 1)
            meta["resourceVersion"] = self._next_rv()
            key = (request.resource, meta.get("namespace"), meta.get("name"))
            if record:
                self.managers.pop(key, None)
        elif action == kmock.action.UPDATE and request.name:
            if isinstance(data, dict):
                data.setdefault("metadata", {})["resourceVersion"] = self._next_rv()
            elif isinstance(data, list):
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": self._next_rv()})
        elif action == kmock.action.DELETE and request.name:
            if key in self.objects and not self.objects[key].deleted:
                obj = self.objects[key]
                obj["metadata"] = {**obj.last.raw.get("metadata", {}), "resourceVersion": self._next_rv()}
        try:
            response = await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from exc
        if record and action in (kmock.action.CREATE, kmock.action.UPDATE) and request.resource is not None \
                and key in self.objects and not self.objects[key].deleted:
            self._record_update(request, key, before, self.objects[key].last.raw)
        return response

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
                      (CONFIGMAPS, "ConfigMap"), (PVCS, "PersistentVolumeClaim"), (NETWORKPOLICIES, "NetworkPolicy"),
                      (JOBSETS, "JobSet"), (TRAINJOBS, "TrainJob")):
        k8s.resources[res] = dict(kind=kind, singular=kind.lower(), namespaced=True, verbs=VERBS, subresources={"status"})
    if isinstance(k8s, Emulator):
        k8s.with_status |= {CR, UNLEARNING_CR, JOBS, PODS, DEPLOYMENTS, SERVICES, PVCS, JOBSETS, TRAINJOBS}


def writes_in(k8s: kmock.KubernetesEmulator, namespace: str) -> list[str]:
    """Every write request the emulator received for objects in ``namespace`` (method and path)."""
    return [f"{getattr(r.method, 'value', r.method)} {r.url.path}" for r in k8s if getattr(r.method, "value", r.method) in WRITES
            and f"/namespaces/{namespace}/" in r.url.path]
