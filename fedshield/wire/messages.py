"""JSON messages between silos and the aggregator (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


MAX_INT = 2**53  # beyond what a federation needs; keeps every count exact in JSON and SQLite
MAX_LOSS = 1e4  # a validation or training loss beyond this is a broken (or lying) silo, refused at upload
MAX_EPSILON = 1e6
EpsilonUnit = Literal["silo", "record", "user"]  # what one (epsilon, delta) guarantee protects (privacy.dp.unit)


class JoinRequest(Message):
    silo: str = Field(max_length=63)
    samples: int = Field(ge=1, le=MAX_INT, description="Training examples the silo holds (FedAvg weight).")
    vector_size: int = Field(ge=1, le=MAX_INT, description="Length of the shared update vector.")
    layout: str = Field(max_length=200, description="Digest of the update vector's layout; must match across silos.")


class UploadMetadata(Message):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    samples: int = Field(ge=1, le=MAX_INT)
    train_loss: float | None = Field(None, ge=0, le=MAX_LOSS)
    val_loss: float | None = Field(None, ge=0, le=MAX_LOSS, description="Validation loss of the global model the silo last received "
                                                                         "(the round's starting point): weighs the next round under "
                                                                         "dynamic balance.")
    val_score: float | None = Field(None, ge=0, le=1, description="The workload's headline validation score of that global model "
                                                                   "(AUC, exact match or token accuracy; higher is better).")
    epsilon: float | None = Field(None, ge=0, le=MAX_EPSILON, description="Privacy budget the silo has spent including this upload.")
    epsilon_unit: EpsilonUnit | None = Field(None, description="What that epsilon protects: a silo's round (silo), one record "
                                                               "(record) or one user (user) in the silo's data.")

    @model_validator(mode="after")
    def _unit_with_epsilon(self) -> UploadMetadata:
        if self.epsilon_unit is not None and self.epsilon is None:
            raise ValueError("epsilon_unit without epsilon")
        return self


class WithdrawRequest(Message):
    reason: str = Field(min_length=1, max_length=500)


class RoundPlan(Message):
    """What a silo needs to take part in the current round."""

    state: Literal["waiting_for_silos", "open", "finished"]
    round: int = Field(description="The open round (or the number of rounds, once finished).")
    rounds_total: int
    mask_seed: int | None = Field(None, description="Shared mask seed (only in the plan a joined silo reads).")
    pruning: float
    explore_share: float
    vector_size: int | None = None
    kept: int | None = None
    layout: str | None = None
    weights: dict[str, float] = Field({}, description="Aggregation weights of the round: only the calling silo's own in the plan "
                                                      "served to a silo (under dynamic balance they follow losses).")
    lr_scales: dict[str, float] = Field({}, description="Learning-rate scales of the round, the calling silo's own likewise.")
    withdrawn: dict[str, str] = Field({}, description="Silos that stopped contributing, with their reason.")
    deadline_s: float | None = Field(None, description="Seconds until the round may close without every silo.")
    mix_weight: float | None = Field(None, description="aggregation.personalise: the caller's own PPLR warm-up weight for this "
                                                      "round (its personal adapter mixes in this much of the others). Only in the "
                                                      "plan served to that silo: the weights of others would reveal their losses.")


class UploadReceipt(Message):
    round: int
    silo: str
    bytes: int
    sha256: str
    duplicate: bool = Field(description="True when this exact upload had already been accepted (a retry).")
    pending: bool = Field(False, description="An unlearning waiting for other silos' approval (not yet published).")


class RoundSummary(Message):
    round: int
    contributors: list[str]
    weight_sum: float
    metadata: dict[str, UploadMetadata]
    upload_bytes: dict[str, int]
    aggregate_bytes: int
    aggregate_s: float
    round_s: float


class StatusSummary(Message):
    """What every caller may see about the whole run, whatever its length."""

    rounds_closed: int
    last_round: dict[str, int] = Field({}, description="The last round each silo contributed to.")
    fairness_gap: float | None = Field(None, description="Max minus min validation AUC of the last closed round.")
    max_epsilon: float | None = Field(None, description="The largest privacy budget a silo reported spent.")
    epsilon_unit: EpsilonUnit | None = Field(None, description="What max_epsilon protects (silo, record or user), as its silo reported.")
    epsilon_by_silo: dict[str, float] = Field({}, description="The privacy budget each silo reported spent in its last accepted "
                                              "upload (unit: epsilon_unit); silos that never reported one are absent.")
    closed_from: int = Field(0, description="The first round listed in ``closed`` (page with ?closed_from=).")


class Status(Message):
    plan: RoundPlan
    joined: dict[str, int] = Field(description="Joined silos; their sample counts only to themselves.")
    uploaded: list[str]
    closed: list[RoundSummary] = Field(description="One page of closed rounds (the latest by default).")
    summary: StatusSummary

