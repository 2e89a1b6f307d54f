"""A `FederatedUnlearning`'s spec and the finetune it names: parsed, checked, refused naming the field (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import ValidationError

from ..api.models import FederatedFinetuneSpec, SiloPlacement
from ..api.unlearning import KIND, FederatedUnlearningSpec
from .manifests import Owner

TERMINAL = ("Succeeded", "Failed")


class Refused(Exception):
    """A spec or a reference that cannot work; the message names the field."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Target(Owner):
    """The FederatedUnlearning the children belong to (from its metadata)."""

    kind: ClassVar[str] = KIND


def parse_spec(raw: dict) -> FederatedUnlearningSpec:
    """The spec, or Refused("InvalidSpec") naming every bad field as spec.<path>."""
    try:
        return FederatedUnlearningSpec.model_validate(dict(raw))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            path = ".".join(["spec", *(str(p) for p in error["loc"])])
            problems.append(f"{path}: {error['msg']}")
        raise Refused("InvalidSpec", "; ".join(problems)) from None


def check_reference(spec: FederatedUnlearningSpec, finetune: dict | None, namespace: str) -> FederatedFinetuneSpec:
    """The referenced finetune's spec, or Refused("InvalidReference") naming spec.finetune or spec.silo."""
    if finetune is None:
        raise Refused("InvalidReference", f'spec.finetune: FederatedFinetune "{spec.finetune}" not found in namespace "{namespace}"')
    try:
        ft_spec = FederatedFinetuneSpec.model_validate(dict(finetune.get("spec") or {}))
    except ValidationError:
        raise Refused("InvalidReference", f'spec.finetune: FederatedFinetune "{spec.finetune}" has an invalid spec') from None
    names = [s.name for s in ft_spec.silos]
    if spec.silo not in names:
        raise Refused("InvalidReference",
                      f'spec.silo: silo "{spec.silo}" is not in FederatedFinetune "{spec.finetune}" (silos: {", ".join(names)})')
    return ft_spec


def silo_of(ft_spec: FederatedFinetuneSpec, name: str) -> SiloPlacement:
    return next(s for s in ft_spec.silos if s.name == name)
