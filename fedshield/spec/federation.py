"""The federation's settings: the sections a FederatedFinetune embeds and a local YAML config holds, and the config every process loads.

`FederationSettings` is what a custom resource and a YAML file share, section by section.
`FederationConfig` adds where the processes run (name, silos, ports, model path): the operator
fills those from the CR's placement; `fedshield run` reads them from the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import Field, model_validator

from ..crypto.params import CkksParams, PackingParams
from ..wire.messages import EpsilonUnit
from .base import SiloName, Spec

if TYPE_CHECKING:
    from ..privacy import Budget

MAX_DECLARED_SAMPLES = 10**12  # far beyond any silo; keeps weights finite and exact in float64
MIN_PACKED_SILOS = PackingParams().max_silos
MAX_SILO_NODES = 64  # one silo's nodes (ranks); beyond that a silo is a cluster of its own, and pod hostnames stay short
PERSONALISE_ZERO3_MESSAGE = ("aggregation.personalise with training.zeroStage 3 is not supported: adapter-personal swaps "
                             "the silo's LoRA tensors in and out around an evaluation, which ZeRO-3's partitioned "
                             "parameters do not allow; use zeroStage 0-2")
MULTI_NODE_DP_SGD_MESSAGE = ("privacy.dp.unit record/user (DP-SGD) needs one-process silos: its Poisson sampling and accounting "
                             "assume one process over the silo's records; use nodes: 1 (and at most one GPU per silo under the "
                             "operator, which runs a rank per GPU) or dp.unit silo")


class LoraSpec(Spec):
    """LoRA adapter shape."""

    r: int = Field(8, ge=1, le=256, description="LoRA rank.")
    alpha: int = Field(16, ge=1, le=4096, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: tuple[str, ...] = Field(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"),
                                            min_length=1, max_length=64, description="Names of the modules that get LoRA adapters.")


class TrainingSpec(Spec):
    """Local training at each silo."""

    learning_rate: float = Field(2e-3, gt=0, le=1, description="Base learning rate; the round plan may scale it per silo.")
    batch_size: int = Field(16, ge=1, le=4096, description="Examples per optimiser step; a multi-node silo splits each batch evenly "
                                                           "over its ranks, so it must divide by the silo's world size (nodes in a "
                                                           "local run; nodes x max(1, gpusPerNode) under the operator).")
    local_steps: int = Field(30, ge=1, le=100000, description="Optimizer steps per silo per round.")
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage.")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Training precision.")


class AggregationSpec(Spec):
    """How rounds close and silos are weighted."""

    strategy: Literal["fedavg", "dynamic_balance"] = Field(
        "fedavg", description="fedavg weighs silos by sample count; dynamic_balance by validation loss, with per-silo learning rates (PPLR).")
    q: float = Field(1.0, ge=0, le=10, description="dynamic_balance: weight ∝ samples * loss^q.")
    gamma: float = Field(1.0, ge=0, le=5, description="dynamic_balance: lr scale = (loss / mean loss)^gamma, within [0.5, 2].")
    min_silos: int = Field(2, ge=2, le=1024, description="Uploads a round needs to close at its deadline (at least 2: one silo's "
                                                        "update is never published; a round short of them is extended).")
    round_deadline_seconds: float = Field(600.0, gt=0, le=7 * 86400,
                                          description="A round closes at this age if minSilos have uploaded; short of that it is extended.")
    max_weight: float = Field(0.75, gt=0, le=1, description="Largest aggregation weight of one silo; the excess goes to the others.")
    upload_retention_rounds: int = Field(0, ge=0, description="Closed rounds whose uploads are kept; older ones are deleted "
                                                             "once their aggregate is durable (0: at once).")
    personalise: bool = Field(False, description="PPLR's warm-up at each silo: after every round a silo also builds "
                                                 "adapter-personal, a mix of its own trained adapter and the global one weighted "
                                                 "by its warm-up weight (served to that silo only); the global adapter stays the "
                                                 "federation's state.")
    warmup_alpha: float = Field(0.7, gt=0, le=10, description="personalise: PPLR's alpha in w = tanh(alpha / l^((t+1)/beta)).")
    warmup_beta: float = Field(1.0, gt=0, le=1000, description="personalise: PPLR's beta (larger: weights reach 1 more slowly).")
    warmup_temperature: float = Field(0.05, gt=0, le=1000, description="personalise: temperature of the softmax over the silos' "
                                                                       "validation losses, l = softmax(loss / temperature).")


class EncryptionSpec(Spec):
    """The CKKS parameters the federation's key set must have: checked against the loaded keys when the aggregator and each silo start."""

    poly_modulus_degree: Literal[8192, 16384] = Field(8192, description="CKKS polynomial degree N (N/2 slots per ciphertext).")
    scale_bits: int = Field(18, ge=18, le=30, description="log2 of the CKKS scale: 18 sums up to 57 silos exactly, each extra bit "
                                                          "allows 4 times more (CKKS noise).")

    def check(self, params: CkksParams) -> None:
        """Raise ValueError unless the key set has these parameters."""
        if (params.poly_degree, params.scale_bits) != (self.poly_modulus_degree, self.scale_bits):
            raise ValueError(f"privacy.encryption asks for polyModulusDegree={self.poly_modulus_degree}, scaleBits={self.scale_bits}, "
                             f"but the key set has poly_degree={params.poly_degree}, scale_bits={params.scale_bits}: "
                             "create the keys with `fedshield keys create --poly-degree ... --scale-bits ...` or fix the spec")


class DPSpec(Spec):
    """Differential privacy (DP-LoRA), at the unit it protects: a silo's round, or a record or user inside a silo."""

    enabled: bool = Field(False, description="Differential privacy on (DP-LoRA).")
    unit: EpsilonUnit = Field(
        "silo", description="What one guarantee protects. silo: a silo's whole contribution per round (its update clipped to "
                            "clipNorm, noise once per round). record / user: one record, or one user with all their records, inside "
                            "a silo (DP-SGD: Poisson-sampled batches, per-unit gradients clipped to clipNorm, noise at every step).")
    sampling_rate: float | None = Field(None, gt=0, le=1, description="DP-SGD: each step's Poisson sampling rate q (default: "
                                                                        "4 * batchSize / the silo's records or users, at most 1: "
                                                                        "an expected batch of four plain batches).")
    clip_norm: float = Field(1.0, gt=0, description="L2 bound C: of a silo's update per round (unit silo), of one record's or "
                                                    "user's gradient per step (record / user).")
    noise_multiplier: float | None = Field(None, gt=0, description="sigma: noise std is sigma * C. Give this or targetEpsilon.")
    target_epsilon: float | None = Field(None, gt=0, description="Total epsilon over all rounds (every step of every round for "
                                                                 "DP-SGD); sigma is solved for it.")
    delta: float = Field(1e-5, gt=0, lt=1, description="delta of (epsilon, delta)-DP.")
    epsilon_budget: float | None = Field(None, gt=0, description="A silo stops contributing before its spend would exceed this "
                                                                "(default: targetEpsilon).")

    @model_validator(mode="after")
    def _one_of(self) -> DPSpec:
        if self.enabled and (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("privacy.dp: give exactly one of noiseMultiplier (noise_multiplier) and targetEpsilon (target_epsilon)")
        return self


class PrivacySpec(Spec):
    """Pruning, packing, encryption, differential privacy, private modules and unlearning bounds."""

    pruning: float = Field(0.5, ge=0, lt=1, description="Fraction of the shared update not sent each round.")
    explore_share: float = Field(0.5, gt=0, le=1, description="Share of each round's kept coordinates taken from the rotating explore "
                                                             "window (the rest: largest accumulated global change).")
    packing: PackingParams = Field(default_factory=PackingParams, description="How update values are quantised and packed into CKKS slots.")
    encryption: EncryptionSpec | None = Field(None, description="CKKS parameters the key set must have (checked at start; "
                                                                "unset: not checked, and the silo count is bounded as for scaleBits 18).")
    private_modules: tuple[str, ...] = Field((), max_length=256, description="fnmatch globs of LoRA parameters that never leave "
                                                                             "their silo (PPLR flexible storage).")
    dp: DPSpec = Field(default_factory=DPSpec, description="Differential privacy (DP-LoRA).")
    unlearning_bound: float = Field(1.0, gt=0, le=2.0**10, description="Largest |change| of one coordinate an unlearning may "
                                                                     "publish; the aggregator and every silo enforce it.")
    unlearning_approvals: int = Field(1, ge=0, description="Other silos that must approve an unlearning (by its SHA-256, "
                                                          "`fedshield approve`) before the aggregator publishes it; at most the "
                                                          "number of silos - 1; 0 publishes at once (one silo can then replace "
                                                          "everyone's adapter).")


class ModelSpec(Spec):
    """The base model (a FederatedFinetune gives it as baseModel, with the volume holding it)."""

    path: str | None = Field(None, description="Local directory of a causal LM; None builds the tiny demo model.")


class DataSpec(Spec):
    """Where each silo's files are and how its examples are built and split."""

    path: str | None = Field(None, description="Local runs: a directory with one folder per silo, named after it (MovieLens files "
                                               "for recommendation, JSONL for instruction); None generates the workload's synthetic "
                                               "data. Under the operator each silo reads its own datasetVolume, never this.")
    seed: int = Field(0, description="Seed of the synthetic data and of the train/validation split.")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of each silo's examples held out for validation (when its "
                                                             "files have no validation file or split).")
    history: int = Field(5, ge=1, description="recommendation: items of a user's history in each example.")
    like_threshold: float = Field(4.0, description="recommendation: a rating at or above this is a like.")
    holdout: int | None = Field(None, ge=1, description="recommendation: validate on each user's last this many interactions (a "
                                                        "temporal split, nothing from the future in training); None: a random "
                                                        "valFraction of the examples.")
    max_label_tokens: int = Field(8, ge=1, le=64, description="instruction: exact match is the headline metric when every "
                                                              "validation response is at most this many tokens; else token "
                                                              "accuracy on the responses.")


class SiloSpec(Spec):
    """One participating organisation."""

    name: SiloName = Field(description="Silo name: a DNS label, unique in the federation.")
    samples: int | None = Field(None, ge=1, le=MAX_DECLARED_SAMPLES, description="Training examples the federation agreed this silo "
                                "holds: the silo's claim at join may not exceed it, and weights use it. Declare it for every silo or "
                                "none (then weights are equal).")
    epsilon_budget: float | None = Field(None, gt=0, description="This organisation's own DP budget (overrides privacy.dp.epsilonBudget).")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Port of this silo's /metrics (local runs; the operator "
                                                                       "always uses 9090, never set in a CR).")
    data_path: str | None = Field(None, description="This silo's own data folder (local runs; default data.path/<name>). Under the "
                                                    "operator: /data, where its datasetVolume is mounted, never set in a CR.")
    nodes: int = Field(1, ge=1, le=MAX_SILO_NODES, description="Nodes (ranks) the silo trains on, data parallel (torch.distributed); "
                       "rank 0 alone talks to the aggregator. 1: one process (the default). Locally (`fedshield run`): that many "
                       "processes on this machine under torchrun. Under the operator: one JobSet (jobset.x-k8s.io/v1alpha2) of that "
                       "many indexed pods running gpusPerNode ranks each (experimental; under the operator's multiNode: auto, the default, only "
                       "when the API server serves JobSets; docs/operator.md).")

    @property
    def ranks(self) -> int:
        """The silo's world size (torch.distributed ranks): locally ``nodes`` processes on one machine."""
        return self.nodes

    def ranks_text(self) -> str:
        """The silo and its world size, for messages."""
        return f"{self.name} ({self.nodes} nodes: {self.ranks} ranks)"


class LimitsSpec(Spec):
    """Aggregator admission limits (429/503 with Retry-After beyond them; silos back off and retry)."""

    max_concurrent_uploads: int = Field(8, ge=1, description="Uploads streamed or checked at once; more get 503.")
    silo_requests_per_s: float = Field(20.0, gt=0, description="Per-silo request rate on /v1 (a silo polls at 5/s).")
    silo_request_burst: int = Field(60, ge=1, description="Requests a silo may send at once above that rate.")
    silo_uploads_per_minute: float = Field(12.0, gt=0, description="Per-silo upload rate (retries included).")
    silo_upload_burst: int = Field(4, ge=1, description="Uploads a silo may send at once above that rate.")
    retry_after_s: float = Field(1.0, gt=0, description="Retry-After sent with 503 when every upload slot is taken.")
    aggregate_wait_s: float = Field(10.0, ge=0, le=120, description="A request for an open round's aggregate is held this long "
                                                                   "(answered the moment the round closes) before a 425.")
    aggregate_retry_after_s: int = Field(1, ge=1, le=300, description="Retry-After (seconds) of that 425: a waiting silo asks "
                                                                      "again after it, so about once per aggregateWaitS + this.")
    header_timeout_s: float = Field(10.0, gt=0, description="A connection whose request headers are not complete by then is closed.")
    body_idle_timeout_s: float = Field(10.0, gt=0, description="An upload body that sends nothing for this long is refused (408).")
    min_upload_bytes_per_s: float = Field(256 * 1024, gt=0, description="An upload body must arrive within "
                                                                       "bodyIdleTimeoutS + its length at this rate.")
    observer_requests_per_s: float = Field(2.0, gt=0, description="Rate of /v1/status calls by certified observers (all together).")
    observer_burst: int = Field(10, ge=1, description="Such calls at once above that rate.")


class FederationSettings(Spec):
    """The sections a FederatedFinetune and a local config share: what to train, how, and under which privacy settings."""

    workload: Literal["recommendation", "instruction"] = Field(
        "recommendation", description="The task: recommendation (TALLRec-style yes/no on MovieLens-format ratings; AUC) or "
                                      "instruction (supervised fine-tuning on JSONL prompt/response, alpaca or chat files; exact "
                                      "match or token accuracy).")
    rounds: int = Field(5, ge=1, le=100000, description="Federated rounds to run.")
    seed: int = Field(0, description="Seed of LoRA initialisation, pruning masks and batches.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA adapter shape.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Local training at each silo.")
    aggregation: AggregationSpec = Field(default_factory=AggregationSpec, description="How rounds close and silos are weighted.")
    privacy: PrivacySpec = Field(default_factory=PrivacySpec, description="Pruning, packing, encryption, differential privacy, "
                                                                          "private modules, unlearning bounds.")
    data: DataSpec = Field(default_factory=DataSpec, description="How each silo's examples are built and split.")
    max_upload_bytes: int = Field(1 << 30, ge=1024, description="Largest upload the aggregator accepts, whatever the envelope.")
    limits: LimitsSpec = Field(default_factory=LimitsSpec, description="Aggregator admission limits.")


def check_silos(settings: FederationSettings, silos: Sequence[SiloSpec]) -> None:
    """The rules tying the settings to the silos (a CR and a config alike); ValueError naming the setting."""
    names = [s.name for s in silos]
    if len(set(names)) != len(names):
        raise ValueError("silos: names must be unique")
    if settings.aggregation.min_silos > len(names):
        raise ValueError(f"aggregation.minSilos (min_silos={settings.aggregation.min_silos}) exceeds the number of silos ({len(names)})")
    if len({s.samples is None for s in silos}) > 1:
        raise ValueError("silos: declare samples for every silo or for none (then weights are equal)")
    if settings.privacy.unlearning_approvals > len(names) - 1:
        raise ValueError(f"privacy.unlearningApprovals (unlearning_approvals={settings.privacy.unlearning_approvals}) "
                         f"exceeds the {len(names) - 1} other silos")
    if settings.aggregation.max_weight * len(names) < 1:
        raise ValueError(f"aggregation.maxWeight (max_weight={settings.aggregation.max_weight}) is below 1/{len(names)}: "
                         "weights could not sum to 1")
    if settings.aggregation.personalise and settings.training.zero_stage == 3:
        raise ValueError(PERSONALISE_ZERO3_MESSAGE)
    multi = [s for s in silos if s.ranks > 1]
    if multi and settings.privacy.dp.enabled and settings.privacy.dp.unit != "silo":
        raise ValueError(f"{MULTI_NODE_DP_SGD_MESSAGE} (silos {', '.join(s.name for s in multi)})")
    if uneven := [s.ranks_text() for s in silos if s.ranks > 1 and settings.training.batch_size % s.ranks]:
        raise ValueError(uneven_batch_message(settings.training.batch_size, uneven))


def uneven_batch_message(batch_size: int, silos: Sequence[str]) -> str:
    """The one wording (spec, CR, silo agent) of a batch that does not split evenly over a silo's ranks."""
    return (f"training.batchSize (batch_size={batch_size}) must divide by the world size of each multi-rank silo (each rank trains "
            f"an equal share of every batch; world size = nodes in a local run, nodes x max(1, gpusPerNode) under the operator): "
            f"{', '.join(silos)}")


DEMO_SILOS = (SiloSpec(name="clinic-a"), SiloSpec(name="clinic-b"), SiloSpec(name="clinic-c"))


class FederationConfig(FederationSettings):
    """What every process of one federation loads: the settings plus where things run (a YAML file, or the operator's ConfigMap)."""

    name: str = Field("demo", description="The federation's name (under the operator: the CR's name).")
    silos: tuple[SiloSpec, ...] = Field(DEMO_SILOS, description="The participating organisations.")
    aggregator_port: int = Field(8470, ge=1, le=65535, description="Port of the aggregator's API.")
    aggregator_metrics_port: int | None = Field(None, ge=1, le=65535, description="Port of the aggregator's /metrics (None: off).")
    model: ModelSpec = Field(default_factory=ModelSpec, description="The base model.")

    @model_validator(mode="after")
    def _consistent(self) -> FederationConfig:
        check_silos(self, self.silos)
        return self

    @property
    def silo_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.silos)

    @property
    def declared_samples(self) -> dict[str, int] | None:
        """The sample counts the federation agreed per silo, or None when none were declared (equal weights)."""
        counts = {s.name: s.samples for s in self.silos if s.samples is not None}
        return counts if self.silos and len(counts) == len(self.silos) else None

    def dp_budget(self, silo: str | None = None) -> Budget | None:
        """Silo-level DP settings a silo applies to its update (None without DP or under DP-SGD); sigma solved once."""
        from ..privacy import Budget, noise_for_epsilon

        dp = self.privacy.dp
        if not dp.enabled or dp.unit != "silo":
            return None  # record- and user-level DP-SGD: fedshield.learning.dp_sgd.silo_dp_sgd, at the silo
        sigma = dp.noise_multiplier or noise_for_epsilon(dp.target_epsilon, self.rounds, dp.delta)
        return Budget(dp.clip_norm, sigma, dp.delta, self.epsilon_budget_of(silo))

    def epsilon_budget_of(self, silo: str | None) -> float:
        """What ``silo`` may spend: its own budget, else privacy.dp.epsilonBudget, else the target (inf: unbounded)."""
        dp = self.privacy.dp
        own = next((s.epsilon_budget for s in self.silos if s.name == silo and s.epsilon_budget), None)
        return own or dp.epsilon_budget or dp.target_epsilon or float("inf")

    def packing(self) -> PackingParams:
        """Packing of this run: max_silos at least the silo count; with DP the value bound widens to 4 noise standard deviations."""
        packing = self.privacy.packing
        update: dict[str, float | int] = {"max_silos": max(packing.max_silos, len(self.silos))}
        budget = self.dp_budget()
        if budget is not None:
            update["value_bound"] = max(packing.value_bound, 4 * budget.noise_multiplier * budget.clip_norm)
        return packing.model_copy(update=update)

    def unlearning_packing(self) -> PackingParams:
        """The packing of every unlearning replacement of this run: from the spec, never from the uploader's header."""
        return PackingParams(value_bound=self.privacy.unlearning_bound, digits_per_slot=1, max_silos=1)

    def check_keys(self, params: CkksParams) -> None:
        """ValueError when privacy.encryption is set and the loaded key set has other parameters."""
        if self.privacy.encryption is not None:
            self.privacy.encryption.check(params)


# Settings of the config a FederatedFinetune does not take: the operator places them (YAML path -> where from).
PLACED_BY_OPERATOR = {
    "name": "metadata.name",
    "aggregator_port": "8470",
    "aggregator_metrics_port": "9090",
    "model.path": "spec.baseModel.path",
    "data.path": "- (each silo reads its own datasetVolume)",
    "silos[].data_path": "/data (the silo's spec.silos[].datasetVolume)",
    "silos[].metrics_port": "9090",
}


def load_config(path: str | Path) -> FederationConfig:
    """A YAML config (snake_case or camelCase keys, e.g. the operator's ConfigMap)."""
    with open(path, encoding="utf-8") as fh:
        return FederationConfig.model_validate(yaml.safe_load(fh) or {})


def config_yaml(config: FederationConfig, by_alias: bool = False) -> str:
    """The config file every process loads: snake_case (local runs), or camelCase (``by_alias``: the operator's
    ConfigMap, each section exactly as the FederatedFinetune spells it). ``load_config`` reads both."""
    return yaml.safe_dump(config.model_dump(mode="json", by_alias=by_alias), sort_keys=False)
