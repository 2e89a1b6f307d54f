"""Pure functions: a multi-node silo (``nodes > 1``) -> one JobSet (``jobset.x-k8s.io/v1alpha2``) that runs it.

A silo with one node stays the Job of :func:`fedshield.operator.manifests.silo_job` (torchrun inside its pod when it
has more than one GPU). A silo with ``nodes`` N > 1 is
one JobSet with one replicated job (``rank``, replicas 1) whose Job is Indexed with ``completions = parallelism = N``:
pod ``i`` is node rank ``i``. ``network.enableDNSHostnames`` makes JobSet create the headless Service (named as the
JobSet: the subdomain) so that every pod is reachable as ``<jobset>-rank-0-<i>.<jobset>``; rank 0's name is the
rendezvous address (``MASTER_ADDR``). The Job's ``backoffLimit`` is 0: one failed rank fails the Job, and the JobSet's
``failurePolicy`` (no rules: every failure restarts) recreates the whole group, at most ``maxRestarts`` times.

Every pod runs ``torchrun`` (``python -m torch.distributed.run``: ``NPROC_PER_NODE`` ranks on node ``NODE_RANK`` of
``NNODES``, rendezvous at ``MASTER_ADDR:MASTER_PORT``, no restarts of its own) around the silo agent; rank 0 alone talks
to the aggregator (``fedshield.silo_agent.agent``). Experimental: multi-rank silo agents have run on one machine only
(gloo on CPU, ``fedshield run``); no JobSet controller, NCCL or GPU cluster ran them. The operator creates JobSets only
with ``multiNode: jobset``, or ``auto`` (the default) when the API server serves JobSets; TrainJobs (:mod:`trainjob`)
with ``trainjob``; it refuses multi-node silos otherwise (docs/operator.md).
"""

from __future__ import annotations

import hashlib
import re

from ..api.models import FederatedFinetuneSpec, SiloPlacement
from ..spec.commands import torchrun_program
from .manifests import RENDEZVOUS_PORT, SILO_JOB_BACKOFF_LIMIT, Owner, _meta, labels, silo_command, silo_job_name, silo_pod

API_VERSION, KIND, PLURAL = "jobset.x-k8s.io/v1alpha2", "JobSet", "jobsets"
REPLICATED_JOB = "rank"
MAX_RESTARTS = SILO_JOB_BACKOFF_LIMIT  # whole-group restarts, as many as a one-pod silo's pod retries
NAME_LIMIT = 50  # <name>-rank-0-<index> stays a DNS label (63) for 64 nodes; the name is also the headless Service's
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def jobset_name(owner: Owner, silo: str) -> str:
    """The silo's JobSet: its Job's name made a DNS-1035 label (a Service name) of at most ``NAME_LIMIT`` characters."""
    full = re.sub(r"[^a-z0-9-]", "-", silo_job_name(owner, silo))
    if not full[:1].isalpha():
        full = f"fs-{full}"
    if len(full) <= NAME_LIMIT:
        return full
    return f"{full[:NAME_LIMIT - 9].rstrip('-')}-{hashlib.sha256(full.encode()).hexdigest()[:8]}"


def rank0_host(name: str) -> str:
    """Stable hostname of the index-0 pod: ``<jobset>-<replicatedJob>-<jobIndex>-<podIndex>.<subdomain>``."""
    return f"{name}-{REPLICATED_JOB}-0-0.{name}"


def processes_per_node(silo: SiloPlacement) -> int:
    """One process per GPU; a CPU-only node runs one (``SiloPlacement.ranks_per_node``)."""
    return silo.ranks_per_node


def rendezvous_env(name: str, silo: SiloPlacement) -> list[dict]:
    """What torchrun / DeepSpeed read: MASTER_ADDR, MASTER_PORT, NNODES, NPROC_PER_NODE, WORLD_SIZE, NODE_RANK."""
    per_node = processes_per_node(silo)
    return [
        {"name": "MASTER_ADDR", "value": rank0_host(name)},
        {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
        {"name": "NNODES", "value": str(silo.nodes)},
        {"name": "NPROC_PER_NODE", "value": str(per_node)},
        {"name": "WORLD_SIZE", "value": str(silo.ranks)},  # what the spec's batch check divides by
        {"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},  # = JOB_COMPLETION_INDEX
    ]


def rank_command(owner: Owner, silo: SiloPlacement) -> list[str]:
    """torchrun around the silo agent, its rendezvous from the pod's environment (Kubernetes expands ``$(VAR)``)."""
    program = torchrun_program("python", "fedshield.cli", "$(NPROC_PER_NODE)", nnodes="$(NNODES)", node_rank="$(NODE_RANK)",
                               master_addr="$(MASTER_ADDR)", master_port="$(MASTER_PORT)", max_restarts=0)  # JobSet restarts
    return silo_command(owner, silo, program=program)


def rank_pod(owner: Owner, spec: FederatedFinetuneSpec, silo: SiloPlacement, name: str) -> dict:
    """A rank's pod: the one-node silo's pod (gpusPerNode GPUs) running torchrun, the rendezvous environment and port."""
    pod = silo_pod(owner, spec, silo.model_copy(update={"gpus": silo.pod_gpus}), rank_command(owner, silo))
    container = pod["containers"][0]
    container["env"] = list(container["env"]) + rendezvous_env(name, silo)
    container["ports"] = list(container["ports"]) + [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]
    return pod


def silo_jobset(owner: Owner, spec: FederatedFinetuneSpec, silo: SiloPlacement) -> dict:
    """The JobSet of a silo with ``nodes > 1``."""
    name = jobset_name(owner, silo.name)
    job_spec: dict = {
        "completions": silo.nodes, "parallelism": silo.nodes, "completionMode": "Indexed",
        "backoffLimit": 0,  # one rank down is the group down: the JobSet restarts all of them
        "template": {"metadata": {"labels": labels(owner, "silo", silo.name)}, "spec": rank_pod(owner, spec, silo, name)},
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {
        "apiVersion": API_VERSION, "kind": KIND, "metadata": _meta(owner, name, silo.namespace, "silo", silo.name),
        "spec": {
            "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": 1, "template": {"spec": job_spec}}],
            "network": {"enableDNSHostnames": True},
            "failurePolicy": {"maxRestarts": MAX_RESTARTS},
            "suspend": spec.suspend,
        },
    }


def silo_workload(owner: Owner, spec: FederatedFinetuneSpec, silo: SiloPlacement, multi_node: str = "auto") -> dict:
    """A silo's workload: its Job (one node), else its JobSet, or its TrainJob under ``multiNode: trainjob``."""
    from .manifests import silo_job
    from .trainjob import silo_trainjob

    if silo.nodes == 1:
        return silo_job(owner, spec, silo)
    return silo_trainjob(owner, spec, silo) if multi_node == "trainjob" else silo_jobset(owner, spec, silo)
