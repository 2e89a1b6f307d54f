"""A small async Kubernetes REST client for the few kinds the operator touches (httpx).

The operator never touches Secrets: there is no path for them here, and its RBAC
grants no verb on them. It writes only what it owns: ``apply`` and ``delete`` read the
live object first and leave one that the given owner uid did not create untouched
(``owned_by``); the write itself is conditional on what was read (the patch carries the
live resourceVersion, the delete preconditions on uid and resourceVersion), so an object
replaced in between is not written either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import httpx

from .manifests import owned_by

PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("apps/v1", "Deployment"): "deployments",
    ("batch/v1", "Job"): "jobs",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
}
READ_ONLY = {("fedshield.io/v1alpha1", "FederationMembership"): "federationmemberships"}  # read, never written


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    plural = PLURALS.get((api_version, kind)) or READ_ONLY.get((api_version, kind))
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
    elif kind == "NetworkPolicy":
        part["spec"] = obj["spec"]
    elif kind == "Service":
        part["spec"] = {"type": obj["spec"]["type"], "ports": obj["spec"]["ports"]}
    return part


def _contains(live, wanted) -> bool:
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(_contains(live.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(live, list) and len(live) == len(wanted) and all(_contains(a, b) for a, b in zip(live, wanted))
    return live == wanted


@dataclass
class Kube:
    http: httpx.AsyncClient
    calls: int = 0

    @classmethod
    def from_environment(cls) -> "Kube":
        """In-cluster service account, else the local kubeconfig (via the kubernetes package)."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        cfg = client.Configuration.get_default_copy()
        # Note: a rotated service-account token is picked up at the next operator restart.
        headers = {"Authorization": cfg.api_key["authorization"]} if "authorization" in cfg.api_key else {}
        verify = cfg.ssl_ca_cert if cfg.verify_ssl and cfg.ssl_ca_cert else cfg.verify_ssl
        cert = (cfg.cert_file, cfg.key_file) if cfg.cert_file else None
        return cls(httpx.AsyncClient(base_url=cfg.host, headers=headers, verify=verify, cert=cert, timeout=30))

    @classmethod
    def for_url(cls, url: str, token: str | None = None) -> "Kube":
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return cls(httpx.AsyncClient(base_url=url, headers=headers, timeout=30, verify=os.environ.get("FEDSHIELD_KUBE_CA", True)))

    async def _request(self, method: str, path: str, **kw) -> httpx.Response:
        self.calls += 1
        return await self.http.request(method, path, **kw)

    async def get(self, obj: dict) -> dict | None:
        response = await self._request("GET", object_path(obj))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    async def list(self, api_version: str, kind: str, namespace: str, selector: str | None = None) -> list[dict]:
        params = {"labelSelector": selector} if selector else {}
        response = await self._request("GET", collection_path(api_version, kind, namespace), params=params)
        response.raise_for_status()
        return response.json().get("items", [])

    async def apply(self, desired: dict, owner_uid: str) -> str:
        """Create the child, or bring its mutable part in line: 'created', 'patched', 'unchanged', or 'conflict' (an
        object of that name exists that ``owner_uid`` did not create: nothing is written)."""
        live = await self.get(desired)
        if live is not None and not owned_by(live, owner_uid):
            return "conflict"
        if live is None:
            meta = desired["metadata"]
            response = await self._request("POST", collection_path(desired["apiVersion"], desired["kind"], meta["namespace"]), json=desired)
            if response.status_code != 409:  # 409: created meanwhile; the next reconcile compares it
                response.raise_for_status()
            return "created"
        wanted = mutable_part(desired)
        if _contains(live, wanted):
            return "unchanged"
        wanted["metadata"]["resourceVersion"] = live["metadata"].get("resourceVersion")  # 409 if it changed since the read
        response = await self._request("PATCH", object_path(desired), json=wanted,
                                       headers={"Content-Type": "application/merge-patch+json"})
        if response.status_code == 409:
            return "retry"
        response.raise_for_status()
        return "patched"

    async def delete(self, obj: dict, owner_uid: str) -> str:
        """Delete the object if ``owner_uid`` created it: 'deleted', 'absent', or 'not-owned' (left untouched)."""
        live = await self.get(obj)
        if live is None:
            return "absent"
        if not owned_by(live, owner_uid):
            return "not-owned"
        meta = live["metadata"]
        preconditions = {k: meta[k] for k in ("uid", "resourceVersion") if meta.get(k)}
        response = await self._request("DELETE", object_path(obj), json={"propagationPolicy": "Background", "preconditions": preconditions})
        if response.status_code in (404, 409):  # gone, or replaced since the read: not ours to delete
            return "absent" if response.status_code == 404 else "not-owned"
        response.raise_for_status()
        return "deleted"


async def get_custom_object(kube: Kube, group: str, version: str, plural: str, namespace: str, name: str) -> dict | None:
    """One namespaced custom object (e.g. a FederatedFinetune), None when absent (like CustomObjectsApi.get_namespaced_custom_object)."""
    response = await kube._request("GET", f"/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}")
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.json()
