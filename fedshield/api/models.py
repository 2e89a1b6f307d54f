"""Spec and status of `FederatedFinetune` (fedshield.io/v1alpha1).

The spec embeds the federation's settings (`fedshield/spec`: lora, training, aggregation,
privacy, data, ...) unchanged; this module adds only Kubernetes placement: images,
namespaces, Secrets, volumes, GPUs, resources, scheduling, TLS. Field names are camelCase on the wire (Kubernetes convention) and snake_case in
Python. Every field has a description: it becomes `kubectl explain` text. Rules
that span fields are written twice on purpose: as pydantic validators (the operator
checks every spec it reconciles) and as CEL `x-kubernetes-validations` in the
generated CRD (the API server refuses them at `kubectl apply`); a test keeps the two
in agreement.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from ..crypto.noise import max_summable
from ..spec.base import DNS_LABEL, FinetunePhase, SiloPhase
from ..spec.base import Spec as Model  # every API model: frozen, extra fields refused, camelCase aliases
from ..spec.federation import (
    MULTI_NODE_DP_SGD_MESSAGE,
    PERSONALISE_ZERO3_MESSAGE,
    EncryptionSpec,
    FederationSettings,
    SiloSpec,
    TrainingSpec,
    check_silos,
)
from ..wire.messages import EpsilonUnit

GROUP, VERSION, KIND, PLURAL, SINGULAR, SHORT_NAME = "fedshield.io", "v1alpha1", "FederatedFinetune", "federatedfinetunes", "federatedfinetune", "fft"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"
CIDR = r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"
Cidr = Annotated[str, StringConstraints(pattern=CIDR)]
EXTENDED_RESOURCE = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
GPUS_TWICE_MESSAGE = "silos[]: gpus and gpusPerNode disagree: give one of them (gpusPerNode is the GPUs of each pod)"
# Fields the CRD marks immutable (x-kubernetes-validations: self == oldSelf).
IMMUTABLE = ("baseModel", "workload", "lora", "rounds", "seed", "training", "privacy", "data", "silos")


class BaseModelSpec(Model):
    path: str = Field(description="Directory of the base causal LM inside the pod (loaded with from_pretrained, never from a hub); "
                                  "the pods' model.path.", min_length=1)
    volume_claim: str | None = Field(None, description="PersistentVolumeClaim (in each silo's namespace) holding the model, mounted read-only at /models.", pattern=DNS_SUBDOMAIN)


class Toleration(Model):
    key: str | None = Field(None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(None, description="Taint value to match (with Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(None, description="Taint effect to match; empty matches all.")
    toleration_seconds: int | None = Field(None, ge=0, description="How long a NoExecute taint is tolerated.")


class DatasetVolume(Model):
    claim_name: str = Field(description="PersistentVolumeClaim with the silo's private data, mounted read-only at /data.", pattern=DNS_SUBDOMAIN)
    sub_path: str | None = Field(None, description="Path inside the claim.", pattern=r"^[^/].*$")


class TlsSpec(Model):
    secret_name: str = Field(description="Secret with tls.crt, tls.key and ca.crt (the layout cert-manager writes). Mounted into the pod, never read by the operator.", pattern=DNS_SUBDOMAIN)


class SiloPlacement(SiloSpec):
    """A silo's settings (fedshield/spec) and where its pods run."""

    namespace: str = Field(description="Namespace the silo's Job runs in (owned by that organisation).", pattern=DNS_LABEL)
    key_secret: str = Field(description="Secret (in the silo's namespace) whose key secret.ckks holds the CKKS secret context. Mounted, never read by the operator.", pattern=DNS_SUBDOMAIN)
    dataset_volume: DatasetVolume = Field(description="The silo's private data.")
    gpus: int = Field(1, ge=0, le=16, description="GPUs (of gpuResource) requested by the silo's pod; the pod runs one training "
                      "process (rank) per GPU (torchrun), one without GPUs.")
    gpu_resource: str = Field("nvidia.com/gpu", pattern=EXTENDED_RESOURCE, description="Extended resource name of the GPUs (nvidia.com/gpu, amd.com/gpu, a MIG profile, ...).")
    runtime_class_name: str | None = Field(None, pattern=DNS_SUBDOMAIN, description="RuntimeClass of the silo's pod (e.g. nvidia).")
    priority_class_name: str | None = Field(None, pattern=DNS_SUBDOMAIN, description="PriorityClass of the silo's pod.")
    service_account_name: str | None = Field(None, pattern=DNS_SUBDOMAIN, description="ServiceAccount (in the silo's namespace) the pod runs as; its token is never mounted.")
    image: str | None = Field(None, description="Container image; defaults to spec.image.")
    node_selector: dict[str, str] = Field({}, description="Node labels the silo's pod must match.")
    tolerations: list[Toleration] = Field([], max_length=32, description="Tolerations of the silo's pod.")
    memory: str = Field("16Gi", pattern=QUANTITY, description="Memory request and limit.")
    cpu: str = Field("4", pattern=QUANTITY, description="CPU request.")
    state_size: str = Field("20Gi", pattern=QUANTITY, description="Size of the silo's state volume (checkpoints and the final adapter; retained after deletion).")
    tls: TlsSpec | None = Field(None, description="The silo's client certificate (Common Name = the silo's name); ca.crt is the CA of the aggregator's certificate. Required when aggregator.tls is set.")
    gpus_per_node: int | None = Field(None, ge=0, le=16, description="GPUs (of gpuResource) requested by each of the silo's pods; "
                                      "default: gpus. WORLD_SIZE is nodes * max(1, gpusPerNode).")

    @property
    def pod_gpus(self) -> int:
        """GPUs each of the silo's pods requests: gpusPerNode when given, else gpus."""
        return self.gpus if self.gpus_per_node is None else self.gpus_per_node

    @property
    def ranks_per_node(self) -> int:
        """Processes (ranks) on each of the silo's pods: one per GPU, one on a CPU-only pod."""
        return max(1, self.pod_gpus)

    @property
    def ranks(self) -> int:
        """The silo's world size (``WORLD_SIZE``): nodes x max(1, gpusPerNode)."""
        return self.nodes * self.ranks_per_node

    def ranks_text(self) -> str:
        return f"{self.name} ({self.nodes} nodes x {self.ranks_per_node} GPUs per node: {self.ranks} ranks)"

    @model_validator(mode="after")
    def _gpus_once(self) -> SiloPlacement:
        if self.gpus_per_node is not None and "gpus" in self.model_fields_set and self.gpus != self.gpus_per_node:
            raise ValueError(GPUS_TWICE_MESSAGE)
        return self


class AggregatorSpec(Model):
    public_key_secret: str = Field(description="Secret (in the CR's namespace) whose key public.ckks holds the public CKKS context (no secret key).", pattern=DNS_SUBDOMAIN)
    image: str | None = Field(None, description="Container image; defaults to spec.image.")
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field("ClusterIP", description="How silos reach the aggregator.")
    memory: str = Field("2Gi", pattern=QUANTITY, description="Memory request and limit.")
    cpu: str = Field("1", pattern=QUANTITY, description="CPU request.")
    storage_size: str = Field("10Gi", pattern=QUANTITY, description="Size of the aggregator's state volume (uploads, aggregates, SQLite).")
    ingress_cidrs: list[Cidr] = Field([], max_length=32, description="Address ranges outside the cluster (silos behind a LoadBalancer) "
                                     "allowed to reach the aggregator's API port; in-cluster, only this federation's silo namespaces can.")
    tls: TlsSpec | None = Field(None, description="Mutual TLS: the aggregator's server certificate (valid for <name>-aggregator.<namespace>.svc); ca.crt is the CA of the silos' client certificates. Every silo then needs tls.")


class FederatedFinetuneSpec(FederationSettings):
    """What to fine-tune, with whom, and under which privacy settings: the federation's settings (fedshield/spec) and their placement."""

    image: str = Field("fedshield/fedshield:0.1.0", description="Default container image of the aggregator and silos.", min_length=1)
    base_model: BaseModelSpec = Field(description="The base LLM every silo loads.")
    silos: list[SiloPlacement] = Field(min_length=2, max_length=512, description="The participating organisations (at least 2).")
    aggregator: AggregatorSpec = Field(description="The aggregator's settings.")
    suspend: bool = Field(False, description="Pause: silo Jobs are suspended and the aggregator scaled to zero; resume by setting false.")
    active_deadline_seconds: int | None = Field(None, ge=60, description="Fail the federation if it runs longer than this.")
    insecure: bool = Field(False, description="Run without transport security (plain HTTP, silo names unauthenticated): refused unless "
                                              "set explicitly when aggregator.tls is absent; status then says so. For local trials only.")

    @model_validator(mode="after")
    def _cross_field(self) -> FederatedFinetuneSpec:
        check_silos(self, self.silos)
        if self.data.path is not None or any(s.data_path is not None for s in self.silos):
            raise ValueError(PLACED_DATA_MESSAGE)
        if any(s.metrics_port is not None for s in self.silos):
            raise ValueError(PLACED_PORT_MESSAGE)
        scale = self.privacy.encryption.scale_bits if self.privacy.encryption else EncryptionSpec().scale_bits
        if max(16, len(self.silos)) > max_summable(scale):
            need = next(b for b in range(scale, 61) if max_summable(b) >= len(self.silos))
            raise ValueError(f"privacy.encryption.scaleBits: {len(self.silos)} silos need scaleBits >= {need} "
                             f"(at {scale} CKKS noise breaks exact sums past {max_summable(scale)} uploads)")
        with_tls = [s.name for s in self.silos if s.tls is not None]
        if (self.aggregator.tls is not None) != (len(with_tls) == len(self.silos)) or (self.aggregator.tls is None and with_tls):
            raise ValueError("tls: set aggregator.tls and every silo's tls together (mutual TLS), or none of them")
        if self.aggregator.tls is None and not self.insecure:
            raise ValueError(INSECURE_MESSAGE)
        return self


PLACED_DATA_MESSAGE = ("data.path and silos[].dataPath: placed by the operator (each silo reads its datasetVolume, mounted at "
                       "/data); leave them out")
PLACED_PORT_MESSAGE = "silos[].metricsPort: set by the operator (9090); leave it out"
# CEL: silo s's world size, nodes x max(1, gpusPerNode) with gpusPerNode defaulting to gpus (SiloPlacement.ranks)
_CEL_WORLD = ("((has(s.nodes) ? s.nodes : 1) * (has(s.gpusPerNode) ? (s.gpusPerNode > 0 ? s.gpusPerNode : 1) : "
              f"(has(s.gpus) ? (s.gpus > 0 ? s.gpus : 1) : {max(1, SiloPlacement.model_fields['gpus'].default)})))")
UNEVEN_BATCH_RULE_MESSAGE = ("training.batchSize must divide by the world size of each silo: nodes x max(1, gpusPerNode) "
                             "ranks (gpusPerNode defaults to gpus), each training an equal share of every batch")
INSECURE_MESSAGE = ("tls: aggregator.tls and every silo's tls are required (mutual TLS); "
                    "set insecure: true to run without transport security")

# CEL rules equivalent to the validators above, placed on the `spec` object of the CRD.
SPEC_RULES = [
    {"rule": "self.silos.all(s, self.silos.exists_one(t, t.name == s.name))", "message": "silos: names must be unique"},
    {"rule": "!has(self.aggregation) || !has(self.aggregation.minSilos) || self.aggregation.minSilos <= size(self.silos)",
     "message": "aggregation.minSilos exceeds the number of silos"},
    {"rule": "!has(self.privacy) || !has(self.privacy.dp) || !has(self.privacy.dp.enabled) || !self.privacy.dp.enabled "
             "|| (has(self.privacy.dp.noiseMultiplier) != has(self.privacy.dp.targetEpsilon))",
     "message": "privacy.dp: give exactly one of noiseMultiplier and targetEpsilon"},
    {"rule": "size(self.silos) <= " + str([max_summable(b) for b in range(18, 31)]) + "[(has(self.privacy) && has(self.privacy.encryption) "
             "&& has(self.privacy.encryption.scaleBits) ? self.privacy.encryption.scaleBits : 18) - 18]",
     "message": "privacy.encryption.scaleBits is too small for this many silos (CKKS noise): 18 allows 57, each bit 4 times more"},
    {"rule": "self.silos.all(s, has(s.samples) == has(self.silos[0].samples))",
     "message": "silos: declare samples for every silo or for none"},
    {"rule": "self.silos.all(s, has(s.tls) == has(self.aggregator.tls))",
     "message": "tls: set aggregator.tls and every silo's tls together (mutual TLS), or none of them"},
    {"rule": "has(self.aggregator.tls) || (has(self.insecure) && self.insecure)", "message": INSECURE_MESSAGE},
    {"rule": "!has(self.privacy) || !has(self.privacy.unlearningApprovals) || self.privacy.unlearningApprovals < size(self.silos)",
     "message": "privacy.unlearningApprovals exceeds the number of other silos"},
    {"rule": "!has(self.aggregation) || !has(self.aggregation.maxWeight) || self.aggregation.maxWeight * double(size(self.silos)) >= 1.0",
     "message": "aggregation.maxWeight is below 1/(number of silos): weights could not sum to 1"},
    {"rule": "(!has(self.data) || !has(self.data.path)) && self.silos.all(s, !has(s.dataPath))", "message": PLACED_DATA_MESSAGE},
    {"rule": "self.silos.all(s, !has(s.metricsPort))", "message": PLACED_PORT_MESSAGE},
    {"rule": "!has(self.privacy) || !has(self.privacy.dp) || !has(self.privacy.dp.enabled) || !self.privacy.dp.enabled "
             f"|| !has(self.privacy.dp.unit) || self.privacy.dp.unit == 'silo' || self.silos.all(s, {_CEL_WORLD} == 1)",
     "message": MULTI_NODE_DP_SGD_MESSAGE},
    {"rule": "self.silos.all(s, "
             f"(has(self.training) && has(self.training.batchSize) ? self.training.batchSize : {TrainingSpec().batch_size}) % "
             f"{_CEL_WORLD} == 0)",
     "message": UNEVEN_BATCH_RULE_MESSAGE},
    {"rule": "self.silos.all(s, !has(s.gpusPerNode) || !has(s.gpus) || s.gpus == s.gpusPerNode)", "message": GPUS_TWICE_MESSAGE},
    {"rule": "!has(self.aggregation) || !has(self.aggregation.personalise) || !self.aggregation.personalise "
             "|| !has(self.training) || !has(self.training.zeroStage) || self.training.zeroStage != 3",
     "message": PERSONALISE_ZERO3_MESSAGE},
]


class Condition(Model):
    type: str = Field(description="Ready, Progressing, Suspended, Failed, ...")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: str = Field(description="RFC 3339 time of the last status change.")
    observed_generation: int | None = Field(None, description="The spec generation this condition was computed from.")


class SiloStatus(Model):
    name: str = Field(description="Silo name.")
    phase: SiloPhase = Field(description="Phase of the silo's Job.")
    last_round: int | None = Field(None, description="Last round this silo's upload was accepted in.")
    exit_code: int | None = Field(None, description="Exit code of the last failed container.")
    reason: str | None = Field(None, description="Why the last pod failed (OOMKilled, Error, ...).")
    restarts: int | None = Field(0, description="Failed pods of this silo so far (a multi-node silo: restarts of its whole group; "
                                                "absent for a TrainJob, which does not report them).")
    ranks_ready: str | None = Field(None, description="A multi-node silo: its pods (ranks) running and ready, out of nodes.")
    epsilon: float | None = Field(None, description="Epsilon this silo has spent, by its last accepted upload (unit: epsilonUnit).")


class FederatedFinetuneStatus(Model):
    phase: FinetunePhase = Field(FinetunePhase.PENDING, description="Overall phase.")
    round: int = Field(0, description="Rounds completed (read from the aggregator).")
    rounds_total: int | None = Field(None, description="spec.rounds, for printer columns.")
    silos_ready: str = Field("0/0", description="Silos whose Job is running or done, out of all.")
    fairness_gap: float | None = Field(None, description="Max minus min validation AUC over silos, last round.")
    epsilon: float | None = Field(None, description="Largest epsilon spent by a silo so far.")
    epsilon_unit: EpsilonUnit | None = Field(None, description="What epsilon protects: a silo's round (silo), one record (record) "
                                                               "or one user (user) in a silo's data.")
    observed_generation: int | None = Field(None, description="The spec generation last reconciled.")
    conditions: list[Condition] = Field([], description="Standard conditions.")
    silos: list[SiloStatus] = Field([], description="Per-silo state.")
    aggregator_endpoint: str | None = Field(None, description="In-cluster URL of the aggregator.")
    start_time: str | None = Field(None, description="When the federation started running.")
    completion_time: str | None = Field(None, description="When it succeeded or failed.")
