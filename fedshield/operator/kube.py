"""The operator's Kubernetes client: the official ``kubernetes`` package, run off the event loop.

Only the sync client is installed (no ``kubernetes_asyncio``), so each call goes through
``asyncio.to_thread``; the generated ``ApiClient`` does the HTTP, TLS, auth and token refresh
(in-cluster: ``InClusterConfigLoader`` re-reads the service-account token file once a
minute through ``Configuration.refresh_api_key_hook``; kubeconfig: exec/OIDC plugins).

The operator never touches Secrets: there is no path for them here, and its RBAC grants no
verb on them. It writes only what it owns:

- children are created with POST (never adopting an object created meanwhile: 409) and kept
  in line with **server-side apply** under the field manager ``fedshield-operator``; the
  apply carries the live ``resourceVersion`` that the ownership check read, and is forced
  only where every conflicting manager is ourselves (the fields our own create recorded);
  a conflict with another manager is raised as :class:`FieldConflict`, never forced;
- status writes (:meth:`Kube.patch_status`) carry the ``resourceVersion`` they were decided
  on: a newer object answers 409 (:class:`Conflict`) and the caller re-reads and re-decides;
- deletes are preconditioned on the uid and resourceVersion that the ownership check read.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Literal, overload

import httpx
from kubernetes import client, config

from .manifests import owned_by

FIELD_MANAGER = "fedshield-operator"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("apps/v1", "Deployment"): "deployments",
    ("batch/v1", "Job"): "jobs",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): "jobsets",
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainjobs",
}
READ_ONLY = {("fedshield.io/v1alpha1", "FederationMembership"): "federationmemberships"}  # read, never written
STATUS_ONLY = {  # our own custom resources: read, and their status written (kopf watches and patches the rest)
    ("fedshield.io/v1alpha1", "FederatedFinetune"): "federatedfinetunes",
    ("fedshield.io/v1alpha1", "FederatedUnlearning"): "federatedunlearnings",
}


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    plural = PLURALS.get((api_version, kind)) or READ_ONLY.get((api_version, kind)) or STATUS_ONLY.get((api_version, kind))
    if plural is None:
        raise ValueError(f"the operator does not manage {api_version} {kind}")
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{plural}"


def object_path(obj: dict) -> str:
    meta = obj["metadata"]
    return f"{collection_path(obj['apiVersion'], obj['kind'], meta['namespace'])}/{meta['name']}"


def mutable_part(obj: dict) -> dict:
    """What the operator keeps in line on an existing child (the rest is immutable or owned by others)."""
    part: dict = {"metadata": {"labels": obj["metadata"].get("labels", {})}}
    kind = obj["kind"]
    if kind == "ConfigMap":
        part["data"] = obj.get("data", {})
    elif kind == "Deployment":
        part["spec"] = {"replicas": obj["spec"]["replicas"], "template": obj["spec"]["template"]}
    elif kind == "Job":
        part["spec"] = {"suspend": obj["spec"].get("suspend", False)}
    elif kind in ("JobSet", "TrainJob"):  # a TrainJob's trainer and runtime patches are immutable: suspend alone
        part["spec"] = {"suspend": obj["spec"].get("suspend", False)}
    elif kind == "NetworkPolicy":
        part["spec"] = obj["spec"]
    elif kind == "Service":
        part["spec"] = {"type": obj["spec"]["type"], "ports": obj["spec"]["ports"]}
    return part


def _contains(live, wanted) -> bool:
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(_contains(live.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(live, list) and len(live) == len(wanted) and all(_contains(a, b) for a, b in zip(live, wanted, strict=False))
    return live == wanted


class ApiError(httpx.HTTPStatusError):
    """A refusal by the API server. An ``httpx.HTTPStatusError`` (``.response.status_code``, ``.request.url.path``) so
    that callers written for the earlier httpx client keep working; ``status`` and ``body`` (the Status object) too."""

    def __init__(self, method: str, path: str, status: int, data: bytes):
        request = httpx.Request(method, f"https://kubernetes{path}")
        response = httpx.Response(status, content=data, request=request)
        try:
            self.body = json.loads(data) if data else {}
        except ValueError:
            self.body = {"message": data.decode(errors="replace")}
        self.status = status
        super().__init__(f"{method} {path}: {status} {self.body.get('message', '')}", request=request, response=response)


class Conflict(ApiError):
    """409: the object changed since the resourceVersion we wrote against (or a name is taken, or fields conflict)."""


class FieldConflict(Exception):
    """Server-side apply refused: fields we apply are managed by another field manager (nothing was written)."""

    def __init__(self, what: str, causes: list[dict]):
        self.what, self.causes = what, causes
        fields = ", ".join(f"{c.get('field')} ({c.get('message')})" for c in causes)
        super().__init__(f"{what}: fields managed by another field manager: {fields}")


def _field_conflicts(error: Conflict) -> list[dict]:
    return [c for c in (error.body.get("details") or {}).get("causes") or [] if c.get("reason") == "FieldManagerConflict"]


def _only_ours(causes: list[dict]) -> bool:
    """Whether every conflict is with our own manager (the Update entry our POST recorded), e.g. 'conflict with "x"'."""
    return all(c.get("message", "").startswith(f'conflict with "{FIELD_MANAGER}"') for c in causes)


def in_cluster_configuration(token_file: str = config.incluster_config.SERVICE_TOKEN_FILENAME,
                             ca_file: str = config.incluster_config.SERVICE_CERT_FILENAME,
                             environ=os.environ) -> client.Configuration:
    """The pod's service account, the token re-read from ``token_file`` as the library does (once a minute)."""
    cfg = client.Configuration()
    config.incluster_config.InClusterConfigLoader(token_file, ca_file, try_refresh_token=True, environ=environ).load_and_set(cfg)
    return cfg


@dataclass
class Kube:
    api: client.ApiClient
    calls: int = 0

    @classmethod
    def from_configuration(cls, cfg: client.Configuration) -> Kube:
        return cls(client.ApiClient(cfg))

    @classmethod
    def from_environment(cls) -> Kube:
        """In-cluster service account (token refreshed on rotation), else the local kubeconfig."""
        try:
            cfg = in_cluster_configuration()
        except config.ConfigException:
            cfg = client.Configuration()
            config.load_kube_config(client_configuration=cfg)
        return cls.from_configuration(cfg)

    @classmethod
    def for_url(cls, url: str, token: str | None = None) -> Kube:
        cfg = client.Configuration(host=url)
        if token:
            cfg.api_key["BearerToken"], cfg.api_key_prefix["BearerToken"] = token, "Bearer"
        ca = os.environ.get("FEDSHIELD_KUBE_CA")
        if ca:
            cfg.ssl_ca_cert = ca
        return cls.from_configuration(cfg)

    async def close(self) -> None:
        await asyncio.to_thread(self.api.close)

    # --- the one I/O edge ------------------------------------------------------------------

    def _call_sync(self, method: str, path: str, query: list, body, content_type: str | None) -> tuple[int, bytes]:
        headers = {"Accept": "application/json", "Content-Type": content_type or "application/json"}
        _, url, headers, body, _ = self.api.param_serialize(method, path, query_params=query, header_params=headers, body=body,
                                                          auth_settings=["BearerToken"])
        response = self.api.call_api(method, url, header_params=headers, body=body, _request_timeout=30)
        return response.status, response.read() or b""

    @overload
    async def _call(self, method: str, path: str, *, query: list | None = None, body=None, content_type: str | None = None,
                    missing_ok: Literal[False] = False) -> dict: ...

    @overload
    async def _call(self, method: str, path: str, *, query: list | None = None, body=None, content_type: str | None = None,
                    missing_ok: bool) -> dict | None: ...

    async def _call(self, method: str, path: str, *, query: list | None = None, body=None, content_type: str | None = None,
                    missing_ok: bool = False) -> dict | None:
        """The response's JSON; None for a 404 when ``missing_ok``; otherwise :class:`ApiError` (:class:`Conflict` on 409)."""
        self.calls += 1
        status, data = await asyncio.to_thread(self._call_sync, method, path, list(query or []), body, content_type)
        if status == 404 and missing_ok:
            return None
        if not 200 <= status < 300:
            raise (Conflict if status == 409 else ApiError)(method, path, status, data)
        return json.loads(data) if data else {}

    # --- reads -----------------------------------------------------------------------------

    async def read(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        return await self._call("GET", f"{collection_path(api_version, kind, namespace)}/{name}", missing_ok=True)

    async def get(self, obj: dict) -> dict | None:
        meta = obj["metadata"]
        return await self.read(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])

    async def serves(self, api_version: str, plural: str) -> bool:
        """Whether the API server serves ``plural`` in ``api_version`` (a group/version such as ``jobset.x-k8s.io/v1alpha2``).

        API discovery (``GET /apis/<group>/<version>``), which every authenticated client may read (the built-in
        ``system:discovery`` ClusterRole): no RBAC of the operator's, no read of CustomResourceDefinitions. A group the
        server does not serve answers 404 (False); any other refusal is raised (:class:`ApiError`)."""
        found = await self._call("GET", f"/apis/{api_version}", missing_ok=True)
        return found is not None and any(r.get("name") == plural for r in found.get("resources") or [])

    async def list(self, api_version: str, kind: str, namespace: str, selector: str | None = None) -> list[dict]:
        query = [("labelSelector", selector)] if selector else []
        return (await self._call("GET", collection_path(api_version, kind, namespace), query=query)).get("items", [])

    # --- writes ----------------------------------------------------------------------------

    async def apply(self, desired: dict, owner_uid: str) -> str:
        """Create the child, or bring its mutable part in line by server-side apply: 'created', 'patched', 'unchanged',
        'conflict' (an object of that name exists that ``owner_uid`` did not create: nothing is written) or 'retry' (it
        changed, or was created, since our read). Raises :class:`FieldConflict` when another manager owns a field."""
        live = await self.get(desired)
        if live is not None and not owned_by(live, owner_uid):
            return "conflict"
        what = f"{desired['kind']} {desired['metadata']['namespace']}/{desired['metadata']['name']}"
        if live is None:
            meta = desired["metadata"]
            try:
                await self._call("POST", collection_path(desired["apiVersion"], desired["kind"], meta["namespace"]), body=desired,
                                 query=[("fieldManager", FIELD_MANAGER)])
            except Conflict:
                return "retry"  # created meanwhile, by us or not: the next attempt reads it
            return "created"
        wanted = mutable_part(desired)
        if _contains(live, wanted):
            return "unchanged"  # no request at all
        meta = desired["metadata"]
        body = {"apiVersion": desired["apiVersion"], "kind": desired["kind"], **wanted,
                "metadata": {**wanted["metadata"], "name": meta["name"], "namespace": meta["namespace"],
                             "resourceVersion": live["metadata"].get("resourceVersion")}}  # 409 if it changed since the read
        query = [("fieldManager", FIELD_MANAGER)]
        for force in (False, True):
            try:
                await self._call("PATCH", object_path(desired), body=body, content_type=APPLY,
                                 query=query + ([("force", "true")] if force else []))
                return "patched"
            except Conflict as exc:
                causes = _field_conflicts(exc)
                if not causes:
                    return "retry"  # resourceVersion moved on
                if force or not _only_ours(causes):
                    raise FieldConflict(what, causes) from None
        raise AssertionError("unreachable")

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: dict,
                           resource_version: str | None) -> dict:
        """Merge ``status`` into the status subresource, only if the object is still at ``resource_version``
        (:class:`Conflict` otherwise: re-read, re-decide). Returns the object written."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        return await self._call("PATCH", f"{collection_path(api_version, kind, namespace)}/{name}/status", body=body, content_type=MERGE)

    async def delete(self, obj: dict, owner_uid: str) -> str:
        """Delete the object if ``owner_uid`` created it: 'deleted', 'absent', or 'not-owned' (left untouched)."""
        live = await self.get(obj)
        if live is None:
            return "absent"
        if not owned_by(live, owner_uid):
            return "not-owned"
        meta = live["metadata"]
        preconditions = {k: meta[k] for k in ("uid", "resourceVersion") if meta.get(k)}
        try:
            found = await self._call("DELETE", object_path(obj), body={"propagationPolicy": "Background", "preconditions": preconditions},
                                     missing_ok=True)
        except Conflict:
            return "not-owned"  # replaced since the read: not ours to delete
        return "absent" if found is None else "deleted"


async def get_custom_object(kube: Kube, group: str, version: str, plural: str, namespace: str, name: str) -> dict | None:
    """One namespaced custom object (e.g. a FederatedFinetune), None when absent (like CustomObjectsApi.get_namespaced_custom_object)."""
    return await kube._call("GET", f"/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}", missing_ok=True)
