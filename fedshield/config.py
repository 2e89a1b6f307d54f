"""The federation's configuration (YAML for `fedshield run`, built in for `fedshield demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .crypto.params import PackingParams
from .crypto.envelope import SILO_NAME


MAX_DECLARED_SAMPLES = 10**12  # far beyond any silo; keeps weights finite and exact in float64


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraSpec(Strict):
    r: int = Field(8, ge=1, le=256)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


class TrainingSpec(Strict):
    learning_rate: float = Field(2e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    local_steps: int = Field(30, ge=1)
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage.")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"


class AggregationSpec(Strict):
    strategy: Literal["fedavg", "dynamic_balance"] = Field("fedavg", description="Weights by sample count, or by validation loss with per-silo learning rates.")
    q: float = Field(1.0, ge=0, le=10, description="dynamic_balance: weight ∝ samples * loss^q.")
    gamma: float = Field(1.0, ge=0, le=5, description="dynamic_balance: lr scale = (loss / mean loss)^gamma, within [0.5, 2].")
    min_silos: int = Field(2, ge=2, description="Contributors an aggregate needs (never fewer than 2: one silo's update is never published).")
    round_deadline_s: float = Field(600.0, gt=0, description="A round closes at this age if min_silos have uploaded; short of that it is extended.")
    max_weight: float = Field(0.75, gt=0, le=1, description="Largest aggregation weight of one silo; the excess goes to the others.")
    upload_retention_rounds: int = Field(0, ge=0, description="Closed rounds whose uploads are kept; older ones are deleted "
                                                            "once their aggregate is durable (0: at once).")


class DPSpec(Strict):
    enabled: bool = False
    clip_norm: float = Field(1.0, gt=0, description="L2 bound C of a silo's update per round.")
    noise_multiplier: float | None = Field(None, gt=0, description="sigma; noise std is sigma * C.")
    target_epsilon: float | None = Field(None, gt=0, description="Epsilon over all rounds; sigma is solved for it.")
    delta: float = Field(1e-5, gt=0, lt=1)
    epsilon_budget: float | None = Field(None, gt=0, description="A silo stops contributing before exceeding this (default: target_epsilon).")

    @model_validator(mode="after")
    def _one_of(self) -> "DPSpec":
        if self.enabled and (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("differential privacy needs exactly one of noise_multiplier and target_epsilon")
        return self


class PrivacySpec(Strict):
    pruning: float = Field(0.5, ge=0, lt=1, description="Fraction of the shared update not sent each round.")
    explore_share: float = Field(0.5, gt=0, le=1, description="Share of each round's kept coordinates taken from the rotating explore window (the rest: largest accumulated global change).")
    packing: PackingParams = PackingParams()
    private_modules: tuple[str, ...] = Field((), description="fnmatch globs of LoRA parameters that never leave the silo.")
    dp: DPSpec = DPSpec()
    unlearning_bound: float = Field(1.0, gt=0, le=2.0**10, description="Largest |change| of one coordinate an unlearning may "
                                                                     "publish; the aggregator and every silo enforce it.")
    unlearning_approvals: int = Field(0, ge=0, description="Other silos that must approve an unlearning (by its SHA-256) "
                                                          "before the aggregator publishes it; 0 publishes at once.")


class ModelSpec(Strict):
    path: str | None = Field(None, description="Local directory of a causal LM; None builds the tiny demo model.")


class DataSpec(Strict):
    movielens_path: str | None = Field(None, description="MovieLens-format directory; None generates synthetic data.")
    seed: int = 0
    history: int = Field(5, ge=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)


class SiloSpec(Strict):
    name: str
    samples: int | None = Field(None, ge=1, le=MAX_DECLARED_SAMPLES,
                                description="Training examples the federation agreed this silo holds: bounds what it claims at join.")
    metrics_port: int | None = None
    epsilon_budget: float | None = Field(None, gt=0, description="This organisation's own DP budget (overrides privacy.dp).")

    @model_validator(mode="after")
    def _dns_name(self) -> "SiloSpec":
        if not SILO_NAME.match(self.name):
            raise ValueError(f"silo name {self.name!r} must be a DNS label (lower case, digits, '-')")
        return self


class LimitsSpec(Strict):
    """Aggregator admission limits (429/503 with Retry-After beyond them; silos back off and retry)."""

    max_concurrent_uploads: int = Field(8, ge=1, description="Uploads streamed or checked at once; more get 503.")
    silo_requests_per_s: float = Field(20.0, gt=0, description="Per-silo request rate on /v1 (a silo polls at 5/s).")
    silo_request_burst: int = Field(60, ge=1)
    silo_uploads_per_minute: float = Field(12.0, gt=0, description="Per-silo upload rate (retries included).")
    silo_upload_burst: int = Field(4, ge=1)
    retry_after_s: float = Field(1.0, gt=0, description="Retry-After sent with 503 when every upload slot is taken.")
    header_timeout_s: float = Field(10.0, gt=0, description="A connection whose request headers are not complete by then is closed.")
    body_idle_timeout_s: float = Field(10.0, gt=0, description="An upload body that sends nothing for this long is refused (408).")
    min_upload_bytes_per_s: float = Field(256 * 1024, gt=0, description="An upload body must arrive within "
                                                                       "body_idle_timeout_s + its length at this rate.")
    observer_requests_per_s: float = Field(2.0, gt=0, description="Rate of /v1/status calls by certified observers (all together).")
    observer_burst: int = Field(10, ge=1)


class FederationConfig(Strict):
    name: str = "demo"
    rounds: int = Field(5, ge=1)
    seed: int = 0
    silos: tuple[SiloSpec, ...] = (SiloSpec(name="clinic-a"), SiloSpec(name="clinic-b"), SiloSpec(name="clinic-c"))
    aggregator_port: int = 8470
    aggregator_metrics_port: int | None = None
    model: ModelSpec = ModelSpec()
    lora: LoraSpec = LoraSpec()
    training: TrainingSpec = TrainingSpec()
    aggregation: AggregationSpec = AggregationSpec()
    privacy: PrivacySpec = PrivacySpec()
    data: DataSpec = DataSpec()
    max_upload_bytes: int = Field(1 << 30, ge=1024)
    limits: LimitsSpec = LimitsSpec()

    @model_validator(mode="after")
    def _consistent(self) -> "FederationConfig":
        names = [s.name for s in self.silos]
        if len(set(names)) != len(names):
            raise ValueError("silo names must be unique")
        if self.aggregation.min_silos > len(names):
            raise ValueError(f"min_silos={self.aggregation.min_silos} exceeds the {len(names)} silos")
        if len(names) > self.privacy.packing.max_silos:
            raise ValueError(f"{len(names)} silos exceed packing.max_silos={self.privacy.packing.max_silos}")
        declared = [s.samples is not None for s in self.silos]
        if any(declared) and not all(declared):
            raise ValueError("silos: declare samples for every silo or for none (then weights are equal)")
        if self.privacy.unlearning_approvals > len(names) - 1:
            raise ValueError(f"privacy.unlearning_approvals={self.privacy.unlearning_approvals} exceeds the {len(names) - 1} other silos")
        if self.aggregation.max_weight * len(names) < 1:
            raise ValueError(f"aggregation.max_weight={self.aggregation.max_weight} is below 1/{len(names)}: weights could not sum to 1")
        return self

    @property
    def silo_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.silos)

    @property
    def declared_samples(self) -> dict[str, int] | None:
        """The sample counts the federation agreed per silo, or None when none were declared (equal weights)."""
        if self.silos and all(s.samples is not None for s in self.silos):
            return {s.name: s.samples for s in self.silos}
        return None

    def dp_budget(self, silo: str | None = None):
        """The DP settings a silo applies (None without DP); sigma solved once from the target."""
        from .privacy import Budget, noise_for_epsilon

        dp = self.privacy.dp
        if not dp.enabled:
            return None
        sigma = dp.noise_multiplier or noise_for_epsilon(dp.target_epsilon, self.rounds, dp.delta)
        own = next((s.epsilon_budget for s in self.silos if s.name == silo and s.epsilon_budget), None)
        return Budget(dp.clip_norm, sigma, dp.delta, own or dp.epsilon_budget or dp.target_epsilon or float("inf"))

    def packing(self) -> PackingParams:
        """Packing of this run: with DP the value bound widens to 4 noise standard deviations."""
        packing = self.privacy.packing
        budget = self.dp_budget()
        if budget is None:
            return packing
        return packing.model_copy(update={"value_bound": max(packing.value_bound, 4 * budget.noise_multiplier * budget.clip_norm)})


    def unlearning_packing(self) -> PackingParams:
        """The packing of every unlearning replacement of this run: from the spec, never from the uploader's header."""
        return PackingParams(value_bound=self.privacy.unlearning_bound, digits_per_slot=1, max_silos=1)


def load_config(path: str | Path) -> FederationConfig:
    with open(path, encoding="utf-8") as fh:
        return FederationConfig.model_validate(yaml.safe_load(fh) or {})
