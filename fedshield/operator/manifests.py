"""Pure functions: a `FederatedFinetune` -> the Kubernetes objects that run it.

Children in the CR's namespace (aggregator Deployment, Service, state PVC, plan
ConfigMap) carry an ownerReference to the CR. Children in silo namespaces (each
silo's Job, plan ConfigMap and state PVC) cannot (owner references do not cross
namespaces): they carry labels naming the federation and the operator's finalizer
deletes them. Builders are per silo, so a per-organisation operator later needs only
the silo half.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..api.models import GROUP, KIND, VERSION, FederatedFinetuneSpec, SiloPlacement
from ..spec.commands import PROGRAM, ClientCredentials, ServerCredentials, aggregator_command, torchrun_program
from ..spec.commands import silo_command as spec_silo_command
from ..spec.federation import FederationConfig, FederationSettings, ModelSpec, SiloSpec, config_yaml

AGGREGATOR_PORT, METRICS_PORT = 8470, 9090
CONFIG_DIR, KEYS_DIR, STATE_DIR, DATA_DIR, MODELS_DIR = "/etc/fedshield", "/var/run/fedshield/keys", "/state", "/data", "/models"
TLS_DIR = "/var/run/fedshield/tls"
FEDERATION_LABEL, NAMESPACE_LABEL, SILO_LABEL = "fedshield.io/federation", "fedshield.io/federation-namespace", "fedshield.io/silo"
OWNER_UID_LABEL = "fedshield.io/owner-uid"  # across namespaces (no owner reference possible): the owning CR's uid
SILO_JOB_BACKOFF_LIMIT = 4
RENDEZVOUS_PORT = 29500  # torchrun's and DeepSpeed's default master port (a multi-rank silo's rank 0)
USER_ID = 10001


@dataclass(frozen=True)
class Owner:
    """The CR that owns the children (from its metadata)."""

    name: str
    namespace: str
    uid: str
    kind: ClassVar[str] = KIND

    def reference(self) -> dict:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}

    @property
    def tag(self) -> str:
        """Short hash of namespace/name/uid: in every child name outside the CR's namespace, so two CRs never collide."""
        return hashlib.sha256(f"{self.namespace}/{self.name}/{self.uid}".encode()).hexdigest()[:6]


def child_name(owner: Owner, suffix: str) -> str:
    """``<name>-<tag>-<suffix>``, at most 63 characters (a Job's name becomes a label value); cut names get a hash of the whole."""
    full = f"{owner.name}-{owner.tag}-{suffix}"
    if len(full) <= 63:
        return full
    return f"{full[:54].rstrip('-')}-{hashlib.sha256(full.encode()).hexdigest()[:8]}"


def owned_by(obj: dict | None, uid: str) -> bool:
    """Whether the CR with ``uid`` created ``obj``: its owner reference, or the ownership label across namespaces."""
    if obj is None or not uid:
        return False
    meta = obj.get("metadata") or {}
    if (meta.get("labels") or {}).get(OWNER_UID_LABEL) == uid:
        return True
    return any(ref.get("uid") == uid for ref in meta.get("ownerReferences") or [])


@dataclass(frozen=True)
class Site:
    """Where the operator runs, and who besides a federation's silos may reach its aggregator (the operator's environment)."""

    operator_namespace: str = "fedshield"
    monitoring_namespace: str | None = "monitoring"  # Prometheus, on the metrics port only; None: nobody
    observer_uri: str | None = None  # URI SAN of the operator's client certificate: a read-only observer at mutual-TLS aggregators
    # The aggregator mounts Secrets of the CR's namespace by name: only images the platform trusts may run it.
    aggregator_image_prefixes: tuple[str, ...] = ("fedshield/fedshield:", "fedshield/fedshield@")
    # Silos with nodes > 1 (MULTI_NODE_MODES): "auto" runs them as JobSets when the API server serves JobSets (discovery),
    # "jobset" always does, "trainjob" runs them as Kubeflow Trainer TrainJobs, "off" refuses them. Experimental (issue #20).
    multi_node: str = "auto"

    @classmethod
    def from_environment(cls) -> Site:
        prefixes = tuple(p for p in os.environ.get("FEDSHIELD_AGGREGATOR_IMAGE_PREFIXES", "").split(",") if p)
        return cls(operator_namespace=os.environ.get("FEDSHIELD_OPERATOR_NAMESPACE", "fedshield"),
                   monitoring_namespace=os.environ.get("FEDSHIELD_MONITORING_NAMESPACE", "monitoring") or None,
                   observer_uri=os.environ.get("FEDSHIELD_OBSERVER_URI") or None,
                   aggregator_image_prefixes=prefixes or cls.aggregator_image_prefixes,
                   multi_node=multi_node_mode(os.environ.get(MULTI_NODE_ENV, "auto")))


MULTI_NODE_ENV = "FEDSHIELD_MULTI_NODE"
MULTI_NODE_MODES = ("auto", "jobset", "trainjob", "off")


def multi_node_mode(raw: str) -> str:
    """The chart's ``multiNode`` (``$FEDSHIELD_MULTI_NODE``): auto, jobset, trainjob or off (empty is off, as before auto existed)."""
    value = raw.strip().lower() or "off"
    if value not in MULTI_NODE_MODES:
        raise ValueError(f"{MULTI_NODE_ENV} must be one of {', '.join(MULTI_NODE_MODES)} (empty: off), not {raw!r}")
    return value


def labels(owner: Owner, component: str, silo: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "fedshield", "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": component, "app.kubernetes.io/managed-by": "fedshield-operator",
        FEDERATION_LABEL: owner.name, NAMESPACE_LABEL: owner.namespace, OWNER_UID_LABEL: owner.uid,
    }
    if silo:
        out[SILO_LABEL] = silo
    return out


def _meta(owner: Owner, name: str, namespace: str, component: str, silo: str | None = None) -> dict:
    meta: dict[str, object] = {"name": name, "namespace": namespace, "labels": labels(owner, component, silo)}
    if namespace == owner.namespace:
        meta["ownerReferences"] = [owner.reference()]
    return meta


def aggregator_name(owner: Owner) -> str:
    return f"{owner.name}-aggregator"


def aggregator_url(owner: Owner, tls: bool = False) -> str:
    """The aggregator's in-cluster URL (https when the federation uses mutual TLS)."""
    return f"{'https' if tls else 'http'}://{aggregator_name(owner)}.{owner.namespace}.svc:{AGGREGATOR_PORT}"


def _tls(secret: str) -> tuple[dict, dict]:
    """The volume and mount of a cert-manager style TLS Secret."""
    return ({"name": "tls", "secret": {"secretName": secret, "defaultMode": 0o400}},
            {"name": "tls", "mountPath": TLS_DIR, "readOnly": True})


def silo_data_dir(silo: str) -> str:
    """Where a silo's pod mounts its datasetVolume (and where its config says its data is)."""
    return f"{DATA_DIR}/{silo}"


def silo_job_name(owner: Owner, silo: str) -> str:
    return child_name(owner, silo)


def plan_name(owner: Owner) -> str:
    return child_name(owner, "plan")


def federation_config(owner: Owner, spec: FederatedFinetuneSpec) -> FederationConfig:
    """The config every pod loads: the CR's settings sections unchanged, plus what the operator places (name, ports, paths)."""
    settings = {name: getattr(spec, name) for name in FederationSettings.model_fields}
    silos = tuple(SiloSpec.model_validate(s.model_dump(include=set(SiloSpec.model_fields))
                                          | {"metrics_port": METRICS_PORT, "data_path": silo_data_dir(s.name)}) for s in spec.silos)
    return FederationConfig(**settings, name=owner.name, silos=silos, aggregator_port=AGGREGATOR_PORT,
                            aggregator_metrics_port=METRICS_PORT, model=ModelSpec(path=spec.base_model.path))


def plan_yaml(owner: Owner, spec: FederatedFinetuneSpec) -> str:
    return config_yaml(federation_config(owner, spec), by_alias=True)  # camelCase: the CR's sections as written


def plan_configmap(owner: Owner, namespace: str, plan: str) -> dict:
    """The run plan (``plan_yaml``) as a ConfigMap in one namespace."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(owner, plan_name(owner), namespace, "plan"),
            "data": {"config.yaml": plan}}


def _security_context() -> dict:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "runAsUser": USER_ID, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def _pod_security() -> dict:
    return {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID, "fsGroup": USER_ID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _scratch_volumes() -> tuple[list[dict], list[dict]]:
    """Writable emptyDirs for a read-only root filesystem: /tmp and model / op caches."""
    volumes = [{"name": "tmp", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "cache", "mountPath": "/cache"}]
    return volumes, mounts


ENV = [{"name": "HOME", "value": "/tmp"}, {"name": "HF_HOME", "value": "/cache/hf"}, {"name": "HF_HUB_OFFLINE", "value": "1"},
       {"name": "TORCH_EXTENSIONS_DIR", "value": "/cache/torch_extensions"}, {"name": "PYTHONUNBUFFERED", "value": "1"}]
# A silo's pod ends with its last round: keep /metrics up long enough for a 30 s scrape interval to see the end.
SILO_ENV = ENV + [{"name": "FEDSHIELD_METRICS_LINGER_S", "value": "60"}]


def state_claim(owner: Owner, name: str, namespace: str, size: str, component: str, silo: str | None = None) -> dict:
    """A state volume; the aggregator's is ReadWriteOncePod: one pod, so one writer of its ledger (it also locks it)."""
    mode = "ReadWriteOncePod" if component == "aggregator" else "ReadWriteOnce"
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(owner, name, namespace, component, silo),
            "spec": {"accessModes": [mode], "resources": {"requests": {"storage": size}}}}


def aggregator_deployment(owner: Owner, spec: FederatedFinetuneSpec, site: Site = Site()) -> dict:
    agg = spec.aggregator
    scratch, scratch_mounts = _scratch_volumes()
    scheme = "HTTPS" if agg.tls else "HTTP"
    container: dict[str, Any] = {
        "name": "aggregator", "image": agg.image or spec.image, "imagePullPolicy": "IfNotPresent",
        "command": aggregator_command(f"{CONFIG_DIR}/config.yaml", f"{KEYS_DIR}/public.ckks", STATE_DIR, ServerCredentials(
            f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key", f"{TLS_DIR}/ca.crt", federation=f"{owner.namespace}/{owner.name}",
            observers=(site.observer_uri,) if site.observer_uri else ()) if agg.tls else ServerCredentials(),
            host="0.0.0.0", port=AGGREGATOR_PORT),
        "ports": [{"name": "http", "containerPort": AGGREGATOR_PORT}, {"name": "metrics", "containerPort": METRICS_PORT}],
        "env": ENV,
        "resources": {"requests": {"cpu": agg.cpu, "memory": agg.memory}, "limits": {"memory": agg.memory}},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http", "scheme": scheme}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": scheme}, "periodSeconds": 20, "failureThreshold": 6},
        "securityContext": _security_context(),
        "volumeMounts": [{"name": "public-key", "mountPath": KEYS_DIR, "readOnly": True},
                         {"name": "plan", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "state", "mountPath": STATE_DIR}] + scratch_mounts,
    }
    volumes = [
        {"name": "public-key", "secret": {"secretName": agg.public_key_secret, "items": [{"key": "public.ckks", "path": "public.ckks"}]}},
        {"name": "plan", "configMap": {"name": plan_name(owner)}},
        {"name": "state", "persistentVolumeClaim": {"claimName": f"{aggregator_name(owner)}-state"}},
    ] + scratch
    if agg.tls:
        volume, mount = _tls(agg.tls.secret_name)
        volumes.append(volume)
        container["volumeMounts"].append(mount)
    selector = {"app.kubernetes.io/instance": owner.name, "app.kubernetes.io/component": "aggregator"}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(owner, aggregator_name(owner), owner.namespace, "aggregator"),
        "spec": {
            "replicas": 0 if spec.suspend else 1,
            "strategy": {"type": "Recreate"},  # one writer of the state volume, ever
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels(owner, "aggregator")},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security(),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def aggregator_service(owner: Owner, spec: FederatedFinetuneSpec) -> dict:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(owner, aggregator_name(owner), owner.namespace, "aggregator"),
        "spec": {
            "type": spec.aggregator.service_type,
            "selector": {"app.kubernetes.io/instance": owner.name, "app.kubernetes.io/component": "aggregator"},
            "ports": [{"name": "http", "port": AGGREGATOR_PORT, "targetPort": "http"},
                      {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"}],
        },
    }


def aggregator_network_policy(owner: Owner, spec: FederatedFinetuneSpec, site: Site = Site()) -> dict:
    """Default deny for the aggregator's pods: in from this federation's silo namespaces (their FedShield pods) and the
    operator on the API port, from monitoring on the metrics port, from spec.aggregator.ingressCidrs; out to nothing."""
    fedshield_pods = {"matchLabels": {"app.kubernetes.io/name": "fedshield"}, "matchExpressions": [{"key": SILO_LABEL, "operator": "Exists"}]}
    silo_namespaces = sorted({s.namespace for s in spec.silos})
    api_from = [{"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": silo_namespaces}]},
                 "podSelector": fedshield_pods},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": site.operator_namespace}},
                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": "fedshield-operator"}}}]
    api_from += [{"ipBlock": {"cidr": cidr}} for cidr in spec.aggregator.ingress_cidrs]
    ingress = [{"from": api_from, "ports": [{"protocol": "TCP", "port": AGGREGATOR_PORT}]}]
    if site.monitoring_namespace:
        ingress.append({"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": site.monitoring_namespace}}}],
                        "ports": [{"protocol": "TCP", "port": METRICS_PORT}]})
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _meta(owner, aggregator_name(owner), owner.namespace, "aggregator"),
        "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": owner.name, "app.kubernetes.io/component": "aggregator",
                                                 NAMESPACE_LABEL: owner.namespace}},
                 "policyTypes": ["Ingress", "Egress"], "ingress": ingress, "egress": []},
    }


def silo_credentials(silo: SiloPlacement) -> ClientCredentials:
    """Under mutual TLS: the CA of the aggregator's certificate and the silo's own certificate, as mounted."""
    return ClientCredentials(f"{TLS_DIR}/ca.crt", f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key") if silo.tls else ClientCredentials()


def silo_command(owner: Owner, silo: SiloPlacement, program: Sequence[str] = PROGRAM) -> list[str]:
    """The silo agent's command line (also what an "apply" Job runs: a silo agent restarted on its state)."""
    return spec_silo_command(f"{CONFIG_DIR}/config.yaml", silo.name, f"{KEYS_DIR}/secret.ckks", STATE_DIR,
                             aggregator_url(owner, tls=silo.tls is not None), silo_credentials(silo), program=program)


def silo_pod(owner: Owner, spec: FederatedFinetuneSpec, silo: SiloPlacement, command: list[str]) -> dict:
    """The pod spec of a silo's Jobs: image, key Secret, data, plan, state volume, GPUs, security context."""
    scratch, scratch_mounts = _scratch_volumes()
    data = {"name": "data", "mountPath": silo_data_dir(silo.name), "readOnly": True}
    if silo.dataset_volume.sub_path:
        data["subPath"] = silo.dataset_volume.sub_path
    mounts = [{"name": "keys", "mountPath": KEYS_DIR, "readOnly": True}, data,
              {"name": "plan", "mountPath": CONFIG_DIR, "readOnly": True}, {"name": "state", "mountPath": STATE_DIR}] + scratch_mounts
    volumes = [
        {"name": "keys", "secret": {"secretName": silo.key_secret, "items": [{"key": "secret.ckks", "path": "secret.ckks"}], "defaultMode": 0o400}},
        {"name": "data", "persistentVolumeClaim": {"claimName": silo.dataset_volume.claim_name, "readOnly": True}},
        {"name": "plan", "configMap": {"name": plan_name(owner)}},
        {"name": "state", "persistentVolumeClaim": {"claimName": f"{silo_job_name(owner, silo.name)}-state"}},
    ] + scratch
    if silo.tls:
        volume, mount = _tls(silo.tls.secret_name)
        volumes.append(volume)
        mounts.append(mount)
    if spec.base_model.volume_claim:
        mounts.append({"name": "model", "mountPath": MODELS_DIR, "readOnly": True})
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": spec.base_model.volume_claim, "readOnly": True}})
    limits = {"memory": silo.memory}
    if silo.gpus:
        limits[silo.gpu_resource] = str(silo.gpus)
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(),
        "containers": [{
            "name": "silo", "image": silo.image or spec.image, "imagePullPolicy": "IfNotPresent",
            "command": command,
            "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
            "env": SILO_ENV,
            "resources": {"requests": {"cpu": silo.cpu, "memory": silo.memory}, "limits": limits},
            "securityContext": _security_context(),
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    }
    if silo.node_selector:
        pod["nodeSelector"] = dict(silo.node_selector)
    if silo.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in silo.tolerations]
    for key, value in (("runtimeClassName", silo.runtime_class_name), ("priorityClassName", silo.priority_class_name),
                       ("serviceAccountName", silo.service_account_name)):
        if value:
            pod[key] = value
    return pod


def one_node_program(silo: SiloPlacement) -> Sequence[str]:
    """What a one-node silo's pod runs: the silo agent, or torchrun starting one rank per GPU around it (rendezvous inside
    the pod, no restarts of its own: the Job's pod retries restart the group)."""
    if silo.ranks_per_node == 1:
        return PROGRAM
    return torchrun_program("python", "fedshield.cli", silo.ranks_per_node, master_addr="127.0.0.1",
                            master_port=RENDEZVOUS_PORT, max_restarts=0)


def silo_job(owner: Owner, spec: FederatedFinetuneSpec, silo: SiloPlacement) -> dict:
    """A one-node silo's Job: one pod, ``gpus`` ranks (one without GPUs)."""
    pod = silo_pod(owner, spec, silo.model_copy(update={"gpus": silo.pod_gpus}), silo_command(owner, silo, program=one_node_program(silo)))
    job_spec = {
        "backoffLimit": SILO_JOB_BACKOFF_LIMIT,
        "suspend": spec.suspend,
        "template": {"metadata": {"labels": labels(owner, "silo", silo.name)}, "spec": pod},
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(owner, silo_job_name(owner, silo.name), silo.namespace, "silo", silo.name),
            "spec": job_spec}


def desired_children(owner: Owner, spec: FederatedFinetuneSpec, site: Site = Site()) -> list[dict]:
    """Every object the federation needs, aggregator side first (its NetworkPolicy before its pods)."""
    plan = plan_yaml(owner, spec)
    out = [
        aggregator_network_policy(owner, spec, site),
        plan_configmap(owner, owner.namespace, plan),
        state_claim(owner, f"{aggregator_name(owner)}-state", owner.namespace, spec.aggregator.storage_size, "aggregator"),
        aggregator_service(owner, spec),
        aggregator_deployment(owner, spec, site),
    ]
    for namespace in sorted({s.namespace for s in spec.silos} - {owner.namespace}):
        out.append(plan_configmap(owner, namespace, plan))
    from .jobset import silo_workload  # a multi-node silo is a JobSet or a TrainJob (both build on this module)

    for silo in spec.silos:
        claim = state_claim(owner, f"{silo_job_name(owner, silo.name)}-state", silo.namespace, silo.state_size, "silo", silo.name)
        if silo.nodes > 1:  # every rank, on its own node, mounts it
            claim["spec"]["accessModes"] = ["ReadWriteMany"]
        out.append(claim)
        out.append(silo_workload(owner, spec, silo, site.multi_node))
    return out
