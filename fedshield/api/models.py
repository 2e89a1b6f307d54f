"""Spec and status of `FederatedFinetune` (fedshield.io/v1alpha1).

Field names are camelCase on the wire (Kubernetes convention) and snake_case in
Python. Every field has a description: it becomes `kubectl explain` text. Rules
that span fields are written twice on purpose: as pydantic validators (the operator
checks every spec it reconciles) and as CEL `x-kubernetes-validations` in the
generated CRD (the API server refuses them at `kubectl apply`); a test keeps the two
in agreement.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from ..crypto.noise import max_summable

GROUP, VERSION, KIND, PLURAL, SINGULAR, SHORT_NAME = "fedshield.io", "v1alpha1", "FederatedFinetune", "federatedfinetunes", "federatedfinetune", "fft"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"
CIDR = r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"
Cidr = Annotated[str, StringConstraints(pattern=CIDR)]
EXTENDED_RESOURCE = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
# Fields the CRD marks immutable (x-kubernetes-validations: self == oldSelf).
IMMUTABLE = ("baseModel", "lora", "rounds", "training", "privacy", "silos")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class BaseModelSpec(Model):
    path: str = Field(description="Directory of the base causal LM inside the pod (loaded with from_pretrained, never from a hub).", min_length=1)
    volume_claim: str | None = Field(None, description="PersistentVolumeClaim (in each silo's namespace) holding the model, mounted read-only at /models.", pattern=DNS_SUBDOMAIN)


class LoraSpec(Model):
    r: int = Field(8, ge=1, le=256, description="LoRA rank.")
    alpha: int = Field(16, ge=1, le=4096, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(["q_proj", "v_proj"], min_length=1, max_length=64, description="Names of the modules that get LoRA adapters.")


class TrainingSpec(Model):
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Base learning rate; the round plan may scale it per silo.")
    batch_size: int = Field(8, ge=1, le=4096, description="Micro-batch size per GPU.")
    local_steps: int = Field(10, ge=1, le=100000, description="Optimizer steps per silo per round.")
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage.")
    precision: Literal["fp32", "bf16", "fp16"] = Field("bf16", description="Training precision.")


class AggregationSpec(Model):
    strategy: Literal["fedavg", "dynamicBalance"] = Field("fedavg", description="fedavg weighs silos by sample count; dynamicBalance by validation loss (PPLR).")
    min_silos: int = Field(2, ge=2, le=1024, description="Uploads a round needs to close at its deadline (at least 2: one silo's update is never published; a round short of them is extended).")
    round_deadline_seconds: int = Field(1800, ge=10, le=7 * 86400, description="A round closes at this age if minSilos have uploaded.")


class EncryptionSpec(Model):
    poly_modulus_degree: Literal[8192, 16384] = Field(8192, description="CKKS polynomial degree N (N/2 slots per ciphertext).")
    scale_bits: int = Field(18, ge=18, le=30, description="log2 of the CKKS scale: 18 sums up to 57 silos exactly, each extra bit allows 4 times more (CKKS noise).")


class DifferentialPrivacySpec(Model):
    enabled: bool = Field(False, description="Clip each silo's update and add Gaussian noise (DP-LoRA).")
    clip_norm: float = Field(1.0, gt=0, description="L2 bound C of a silo's update per round.")
    noise_multiplier: float | None = Field(None, gt=0, description="sigma: noise std is sigma * C. Give this or targetEpsilon.")
    target_epsilon: float | None = Field(None, gt=0, description="Total epsilon over all rounds; sigma is solved for it.")
    delta: float = Field(1e-5, gt=0, lt=1, description="delta of (epsilon, delta)-DP.")
    epsilon_budget: float | None = Field(None, gt=0, description="A silo stops contributing before its spend would exceed this (default: targetEpsilon).")


class PrivacySpec(Model):
    encryption: EncryptionSpec = Field(default_factory=EncryptionSpec, description="CKKS parameters of the key set.")
    pruning: float = Field(0.9, ge=0, lt=1, description="Fraction of the shared update not sent each round.")
    differential_privacy: DifferentialPrivacySpec = Field(default_factory=DifferentialPrivacySpec, description="DP-LoRA settings.")
    private_modules: list[str] = Field([], max_length=256, description="fnmatch globs of LoRA parameters that never leave their silo (PPLR flexible storage).")


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


class SiloSpec(Model):
    name: str = Field(description="Silo name: a DNS label, unique in the federation.", pattern=DNS_LABEL)
    namespace: str = Field(description="Namespace the silo's Job runs in (owned by that organisation).", pattern=DNS_LABEL)
    key_secret: str = Field(description="Secret (in the silo's namespace) whose key secret.ckks holds the CKKS secret context. Mounted, never read by the operator.", pattern=DNS_SUBDOMAIN)
    dataset_volume: DatasetVolume = Field(description="The silo's private data.")
    samples: int | None = Field(None, ge=1, le=10**12, description="Training examples the federation agreed this silo holds: the silo's claim at join may not exceed it, and weights use it. Declare it for every silo or none (then weights are equal).")
    gpus: int = Field(1, ge=0, le=16, description="GPUs (of gpuResource) requested by the silo's pod.")
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


class FederatedFinetuneSpec(Model):
    """What to fine-tune, with whom, and under which privacy settings."""

    image: str = Field("fedshield/fedshield:0.1.0", description="Default container image of the aggregator and silos.", min_length=1)
    base_model: BaseModelSpec = Field(description="The base LLM every silo loads.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA adapter shape.")
    rounds: int = Field(10, ge=1, le=100000, description="Federated rounds to run.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Local training at each silo.")
    aggregation: AggregationSpec = Field(default_factory=AggregationSpec, description="How rounds close and silos are weighted.")
    privacy: PrivacySpec = Field(default_factory=PrivacySpec, description="Encryption, pruning, differential privacy, private modules.")
    silos: list[SiloSpec] = Field(min_length=2, max_length=512, description="The participating organisations (at least 2).")
    aggregator: AggregatorSpec = Field(description="The aggregator's settings.")
    suspend: bool = Field(False, description="Pause: silo Jobs are suspended and the aggregator scaled to zero; resume by setting false.")
    active_deadline_seconds: int | None = Field(None, ge=60, description="Fail the federation if it runs longer than this.")
    insecure: bool = Field(False, description="Run without transport security (plain HTTP, silo names unauthenticated): refused unless "
                                              "set explicitly when aggregator.tls is absent; status then says so. For local trials only.")

    @model_validator(mode="after")
    def _cross_field(self) -> "FederatedFinetuneSpec":
        names = [s.name for s in self.silos]
        if len(set(names)) != len(names):
            raise ValueError("silos: names must be unique")
        if self.aggregation.min_silos > len(self.silos):
            raise ValueError(f"aggregation.minSilos ({self.aggregation.min_silos}) exceeds the number of silos ({len(self.silos)})")
        if len({s.samples is None for s in self.silos}) > 1:
            raise ValueError("silos: declare samples for every silo or for none")
        scale = self.privacy.encryption.scale_bits
        if max(16, len(self.silos)) > max_summable(scale):
            need = next(b for b in range(scale, 61) if max_summable(b) >= len(self.silos))
            raise ValueError(f"privacy.encryption.scaleBits: {len(self.silos)} silos need scaleBits >= {need} "
                             f"(at {scale} CKKS noise breaks exact sums past {max_summable(scale)} uploads)")
        with_tls = [s.name for s in self.silos if s.tls is not None]
        if (self.aggregator.tls is not None) != (len(with_tls) == len(self.silos)) or (self.aggregator.tls is None and with_tls):
            raise ValueError("tls: set aggregator.tls and every silo's tls together (mutual TLS), or none of them")
        if self.aggregator.tls is None and not self.insecure:
            raise ValueError(INSECURE_MESSAGE)
        dp = self.privacy.differential_privacy
        if dp.enabled and (dp.noise_multiplier is None) == (dp.target_epsilon is None):
            raise ValueError("privacy.differentialPrivacy: give exactly one of noiseMultiplier and targetEpsilon")
        return self


INSECURE_MESSAGE = ("tls: aggregator.tls and every silo's tls are required (mutual TLS); "
                    "set insecure: true to run without transport security")

# CEL rules equivalent to the validators above, placed on the `spec` object of the CRD.
SPEC_RULES = [
    {"rule": "self.silos.all(s, self.silos.exists_one(t, t.name == s.name))", "message": "silos: names must be unique"},
    {"rule": "!has(self.aggregation) || !has(self.aggregation.minSilos) || self.aggregation.minSilos <= size(self.silos)",
     "message": "aggregation.minSilos exceeds the number of silos"},
    {"rule": "!has(self.privacy) || !has(self.privacy.differentialPrivacy) || !has(self.privacy.differentialPrivacy.enabled) "
             "|| !self.privacy.differentialPrivacy.enabled "
             "|| (has(self.privacy.differentialPrivacy.noiseMultiplier) != has(self.privacy.differentialPrivacy.targetEpsilon))",
     "message": "privacy.differentialPrivacy: give exactly one of noiseMultiplier and targetEpsilon"},
    {"rule": "size(self.silos) <= " + str([max_summable(b) for b in range(18, 31)]) + "[(has(self.privacy) && has(self.privacy.encryption) "
             "&& has(self.privacy.encryption.scaleBits) ? self.privacy.encryption.scaleBits : 18) - 18]",
     "message": "privacy.encryption.scaleBits is too small for this many silos (CKKS noise): 18 allows 57, each bit 4 times more"},
    {"rule": "self.silos.all(s, has(s.samples) == has(self.silos[0].samples))",
     "message": "silos: declare samples for every silo or for none"},
    {"rule": "self.silos.all(s, has(s.tls) == has(self.aggregator.tls))",
     "message": "tls: set aggregator.tls and every silo's tls together (mutual TLS), or none of them"},
    {"rule": "has(self.aggregator.tls) || (has(self.insecure) && self.insecure)", "message": INSECURE_MESSAGE},
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
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"] = Field(description="Phase of the silo's Job.")
    last_round: int | None = Field(None, description="Last round this silo's upload was accepted in.")
    exit_code: int | None = Field(None, description="Exit code of the last failed container.")
    reason: str | None = Field(None, description="Why the last pod failed (OOMKilled, Error, ...).")
    restarts: int = Field(0, description="Failed pods of this silo so far.")


class FederatedFinetuneStatus(Model):
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"] = Field("Pending", description="Overall phase.")
    round: int = Field(0, description="Rounds completed (read from the aggregator).")
    rounds_total: int | None = Field(None, description="spec.rounds, for printer columns.")
    silos_ready: str = Field("0/0", description="Silos whose Job is running or done, out of all.")
    fairness_gap: float | None = Field(None, description="Max minus min validation AUC over silos, last round.")
    epsilon: float | None = Field(None, description="Largest epsilon spent by a silo so far.")
    observed_generation: int | None = Field(None, description="The spec generation last reconciled.")
    conditions: list[Condition] = Field([], description="Standard conditions.")
    silos: list[SiloStatus] = Field([], description="Per-silo state.")
    aggregator_endpoint: str | None = Field(None, description="In-cluster URL of the aggregator.")
    start_time: str | None = Field(None, description="When the federation started running.")
    completion_time: str | None = Field(None, description="When it succeeded or failed.")
