"""Pure functions: a multi-node silo -> one Kubeflow Trainer ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``) that runs it.

Used instead of :mod:`jobset` with ``multiNode: trainjob``. The TrainJob refers to the ClusterTrainingRuntime
``fedshield-torch`` that the operator chart ships (:func:`training_runtime` is its body, the chart's template the same
YAML): the torch plugin, one replicated job ``node`` (label ``trainer.kubeflow.org/trainjob-ancestor-step: trainer``)
whose Job has ``backoffLimit`` 0, the JobSet's ``failurePolicy.maxRestarts`` = :data:`jobset.MAX_RESTARTS`, and DNS
hostnames for the rendezvous. Trainer (v2.3.0) creates the JobSet; its torch plugin sets ``PET_NNODES``,
``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` (``<trainjob>-node-0-0.<trainjob>``) and
``PET_MASTER_PORT`` in container ``node``, and the command (torchrun around the silo agent) passes exactly those.

``trainer`` carries the image, command, environment, GPUs and resources; one ``runtimePatches`` entry (manager
:data:`PATCH_MANAGER`) carries what it cannot: the pod's labels, ServiceAccount, volumes, security contexts, node
selector and tolerations, all taken from the same :func:`manifests.silo_pod` as the JobSet's rank pods. Trainer
v2.3.0's patch has no ``runtimeClassName`` nor ``priorityClassName``: a silo setting either is refused
(:func:`unsupported`). Never run against a Trainer controller (docs/deploy.md).
"""

from __future__ import annotations

from ..api.models import FederatedFinetuneSpec, SiloPlacement
from ..spec.commands import torchrun_program
from .jobset import MAX_RESTARTS
from .jobset import jobset_name as trainjob_name
from .manifests import METRICS_PORT, RENDEZVOUS_PORT, Owner, _meta, labels, silo_command, silo_pod

GROUP = "trainer.kubeflow.org"
API_VERSION, KIND, PLURAL = f"{GROUP}/v1alpha1", "TrainJob", "trainjobs"
RUNTIME_KIND, RUNTIME = "ClusterTrainingRuntime", "fedshield-torch"
REPLICATED_JOB = CONTAINER = "node"  # the torch plugin's names: pod i is <trainjob>-node-0-<i>.<trainjob>
ANCESTOR_LABEL = f"{GROUP}/trainjob-ancestor-step"
PATCH_MANAGER = "fedshield.io/operator"
RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")  # set by the torch plugin
POD_PATCH_FIELDS = ("serviceAccountName", "securityContext", "volumes", "nodeSelector", "tolerations")
UNPATCHABLE = {"runtime_class_name": "runtimeClassName", "priority_class_name": "priorityClassName"}


def unsupported(silo: SiloPlacement) -> list[str]:
    """The silo's pod fields a TrainJob (v2.3.0 ``PodSpecPatch``) cannot carry: such a silo is refused, not run differently."""
    return [field for attr, field in UNPATCHABLE.items() if getattr(silo, attr)]


def node_command(owner: Owner, silo: SiloPlacement) -> list[str]:
    """torchrun around the silo agent, every rendezvous flag from the torch plugin's ``PET_*`` (Kubernetes expands ``$(VAR)``)."""
    program = torchrun_program("python", "fedshield.cli", "$(PET_NPROC_PER_NODE)", nnodes="$(PET_NNODES)", node_rank="$(PET_NODE_RANK)",
                               master_addr="$(PET_MASTER_ADDR)", master_port="$(PET_MASTER_PORT)", max_restarts=0)  # JobSet restarts
    return silo_command(owner, silo, program=program)


def silo_trainjob(owner: Owner, spec: FederatedFinetuneSpec, silo: SiloPlacement) -> dict:
    """The TrainJob of a silo with ``nodes > 1`` (``multiNode: trainjob``)."""
    if unsupported(silo):
        raise ValueError(f"silo {silo.name}: a TrainJob cannot set {', '.join(unsupported(silo))}")
    name = trainjob_name(owner, silo.name)
    pod = silo_pod(owner, spec, silo.model_copy(update={"gpus": silo.pod_gpus}), node_command(owner, silo))
    container = pod["containers"][0]
    pod_patch: dict = {k: pod[k] for k in POD_PATCH_FIELDS if k in pod}
    pod_patch["containers"] = [{"name": CONTAINER, "volumeMounts": container["volumeMounts"], "securityContext": container["securityContext"]}]
    patch = {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
        "name": REPLICATED_JOB,
        "template": {"spec": {"template": {"metadata": {"labels": labels(owner, "silo", silo.name)}, "spec": pod_patch}}},
    }]}}}}
    trainer = {
        "image": container["image"], "command": container["command"],
        "env": [e for e in container["env"] if e["name"] not in RESERVED_ENV],
        "numNodes": silo.nodes, "numProcPerNode": silo.ranks_per_node, "resourcesPerNode": container["resources"],
    }
    train_spec: dict = {
        "runtimeRef": {"apiGroup": GROUP, "kind": RUNTIME_KIND, "name": RUNTIME},
        "trainer": trainer, "runtimePatches": [patch], "suspend": spec.suspend,
    }
    if spec.active_deadline_seconds:  # the whole TrainJob's (a JobSet silo's applies to each run of its Job)
        train_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": _meta(owner, name, silo.namespace, "silo", silo.name), "spec": train_spec}


def training_runtime(image: str = "fedshield/fedshield") -> dict:
    """The ClusterTrainingRuntime the operator chart ships (templates/trainingruntime.yaml, ``multiNode: trainjob``)."""
    node = {
        "name": CONTAINER, "image": image, "imagePullPolicy": "IfNotPresent",  # trainer.image replaces it
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT}, {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}],
    }
    job = {
        "metadata": {"labels": {ANCESTOR_LABEL: "trainer"}},
        "spec": {"completionMode": "Indexed", "backoffLimit": 0,  # one rank down is the group down: JobSet restarts all
                 "template": {"spec": {"restartPolicy": "Never", "automountServiceAccountToken": False, "containers": [node]}}},
    }
    return {
        "apiVersion": API_VERSION, "kind": RUNTIME_KIND,
        "metadata": {"name": RUNTIME, "labels": {f"{GROUP}/framework": "torch"}},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {"spec": {
                "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
                "failurePolicy": {"maxRestarts": MAX_RESTARTS},
                "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": 1, "template": job}],
            }},
        },
    }
