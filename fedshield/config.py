"""The federation's configuration (YAML for `fedshield run`, built in for `fedshield demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .crypto.params import PackingParams
from .crypto.envelope import SILO_NAME


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
    min_silos: int = Field(1, ge=1)
    round_deadline_s: float = Field(600.0, gt=0, description="A round closes at this age if min_silos have uploaded.")


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


class ModelSpec(Strict):
    path: str | None = Field(None, description="Local directory of a causal LM; None builds the tiny demo model.")


class DataSpec(Strict):
    movielens_path: str | None = Field(None, description="MovieLens-format directory; None generates synthetic data.")
    seed: int = 0
    history: int = Field(5, ge=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)


class SiloSpec(Strict):
    name: str
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
        return self

    @property
    def silo_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.silos)

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


def load_config(path: str | Path) -> FederationConfig:
    with open(path, encoding="utf-8") as fh:
        return FederationConfig.model_validate(yaml.safe_load(fh) or {})
