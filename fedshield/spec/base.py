"""The base of every spec model, the silo-name type and the phase enums."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints
from pydantic.alias_generators import to_camel

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class Spec(BaseModel):
    """Frozen, unknown fields refused; snake_case in Python and YAML files, camelCase aliases in custom resources (both load)."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


SiloName = Annotated[str, StringConstraints(pattern=DNS_LABEL)]
"""A silo's name: a DNS label (lower case, digits, '-'), unique in its federation."""


class FinetunePhase(str, Enum):
    """Phase of a FederatedFinetune."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


SiloPhase = FinetunePhase  # a silo's Job goes through the same phases


class UnlearningPhase(str, Enum):
    """Phase of a FederatedUnlearning and of its Jobs."""

    PENDING = "Pending"
    RUNNING = "Running"
    WAITING_FOR_APPROVAL = "WaitingForApproval"  # uploaded; other silos must approve its SHA-256 (privacy.unlearningApprovals)
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
