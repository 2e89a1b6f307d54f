"""The children of a `FederatedUnlearning` (pure): the forget-list ConfigMap, the unlearning Job, the apply Jobs.

Children live in silo namespaces, so, like a FederatedFinetune's silo children, they carry
labels naming the unlearning and are deleted by the operator's finalizer (an ownerReference
is added where the namespace is the CR's own). Labels never name the federation: the
finetune's status would count them as its silo Jobs.
"""

from __future__ import annotations

from ..api.models import FederatedFinetuneSpec, SiloPlacement
from ..api.unlearning import FederatedUnlearningSpec
from ..spec import commands
from .manifests import (
    CONFIG_DIR,
    KEYS_DIR,
    OWNER_UID_LABEL,
    SILO_JOB_BACKOFF_LIMIT,
    SILO_LABEL,
    STATE_DIR,
    Owner,
    aggregator_url,
    child_name,
    silo_command,
    silo_credentials,
    silo_pod,
)
from .unlearning_refs import Target, silo_of

UNLEARNING_LABEL, UNLEARNING_NS_LABEL = "fedshield.io/unlearning", "fedshield.io/unlearning-namespace"
FORGET_DIR, FORGET_FILE = "/etc/fedshield-forget", "users.txt"


def job_name(target: Target) -> str:
    return child_name(target, "unlearn")


def apply_job_name(target: Target, silo: str) -> str:
    return child_name(target, f"apply-{silo}")


def forget_configmap_name(target: Target) -> str:
    return child_name(target, "forget")


def labels(target: Target, component: str, silo: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "fedshield", "app.kubernetes.io/instance": target.name,
            "app.kubernetes.io/component": component, "app.kubernetes.io/managed-by": "fedshield-operator",
            UNLEARNING_LABEL: target.name, UNLEARNING_NS_LABEL: target.namespace, OWNER_UID_LABEL: target.uid, SILO_LABEL: silo}


def selector(target: Target) -> str:
    return f"{UNLEARNING_LABEL}={target.name},{UNLEARNING_NS_LABEL}={target.namespace}"


def _meta(target: Target, name: str, namespace: str, component: str, silo: str) -> dict:
    meta: dict[str, object] = {"name": name, "namespace": namespace, "labels": labels(target, component, silo)}
    if namespace == target.namespace:
        meta["ownerReferences"] = [target.reference()]
    return meta


def forget_configmap(target: Target, namespace: str, silo: str, users: list[str]) -> dict:
    """The inline user ids, one per line, for the unlearning pod to read."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(target, forget_configmap_name(target), namespace, "forget-list", silo),
            "data": {FORGET_FILE: "".join(f"{u}\n" for u in users)}}


def _forget_source(target: Target, spec: FederatedUnlearningSpec) -> tuple[str, dict | None]:
    """The --users-file path inside the pod, and the volume holding it (None: the state volume)."""
    forget = spec.forget
    if forget.path is not None:
        return f"{STATE_DIR}/{forget.path}", None
    if forget.users:
        name, key = forget_configmap_name(target), FORGET_FILE
    elif forget.config_map is not None:
        name, key = forget.config_map.name, forget.config_map.key
    else:  # the spec's validator refuses a forget with none of users, configMap and path
        raise ValueError("forget: give exactly one of users, configMap and path")
    return f"{FORGET_DIR}/{FORGET_FILE}", {"name": "forget", "configMap": {"name": name, "items": [{"key": key, "path": FORGET_FILE}]}}


def unlearn_command(finetune: Owner, silo: SiloPlacement, spec: FederatedUnlearningSpec, users_file: str) -> list[str]:
    return commands.unlearn_command(f"{CONFIG_DIR}/config.yaml", spec.silo, f"{KEYS_DIR}/secret.ckks", STATE_DIR,
                                    aggregator_url(finetune, tls=silo.tls is not None), spec, users_file=users_file,
                                    requested_by=spec.requested_by, reason=spec.reason, client=silo_credentials(silo))


def _job(target: Target, name: str, namespace: str, component: str, silo: str, pod: dict, backoff_limit: int) -> dict:
    job_spec = {"backoffLimit": backoff_limit, "suspend": False,
                "template": {"metadata": {"labels": labels(target, component, silo)}, "spec": pod}}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(target, name, namespace, component, silo), "spec": job_spec}


def unlearning_job(target: Target, finetune: Owner, ft_spec: FederatedFinetuneSpec, spec: FederatedUnlearningSpec) -> dict:
    """The one Job that forgets: the silo's training pod template with `fedshield unlearn` (silo mode).

    No retry after a failed attempt (it may have uploaded already); pod disruptions (preemption,
    node drain) do not count as failures.
    """
    silo = silo_of(ft_spec, spec.silo)
    users_file, volume = _forget_source(target, spec)
    pod = silo_pod(finetune, ft_spec, silo, unlearn_command(finetune, silo, spec, users_file))
    if volume is not None:
        pod["volumes"].append(volume)
        pod["containers"][0]["volumeMounts"].append({"name": "forget", "mountPath": FORGET_DIR, "readOnly": True})
    job = _job(target, job_name(target), silo.namespace, "unlearning", silo.name, pod, 0)
    job["spec"]["podFailurePolicy"] = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}
    return job


def apply_job(target: Target, finetune: Owner, ft_spec: FederatedFinetuneSpec, silo: SiloPlacement) -> dict:
    """A silo agent restarted on its state: it applies the published unlearning and exits (the training Job's pod, one
    process even where training runs a rank per GPU: it trains nothing, and leaves a multi-rank checkpoint's optimiser
    partitions as they are)."""
    pod = silo_pod(finetune, ft_spec, silo, silo_command(finetune, silo))
    return _job(target, apply_job_name(target, silo.name), silo.namespace, "unlearning-apply", silo.name, pod, SILO_JOB_BACKOFF_LIMIT)


def unlearning_children(target: Target, finetune: Owner, ft_spec: FederatedFinetuneSpec, spec: FederatedUnlearningSpec) -> list[dict]:
    """What runs the unlearning at the silo: the forget-list ConfigMap (inline users only), then the Job."""
    silo = silo_of(ft_spec, spec.silo)
    out = [forget_configmap(target, silo.namespace, silo.name, spec.forget.users)] if spec.forget.users else []
    return out + [unlearning_job(target, finetune, ft_spec, spec)]


def apply_jobs(target: Target, finetune: Owner, ft_spec: FederatedFinetuneSpec, spec: FederatedUnlearningSpec) -> list[dict]:
    return [apply_job(target, finetune, ft_spec, s) for s in ft_spec.silos if s.name != spec.silo]
