"""Build the CustomResourceDefinitions (`FederatedFinetune`, `FederatedUnlearning`, `FederationMembership`) from the pydantic models.

`fedshield crd [--kind unlearning|membership]` prints one; the chart carries the same bytes (a test compares them).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from . import membership as fm
from . import unlearning as fu
from .models import (
    GROUP,
    IMMUTABLE,
    KIND,
    PLURAL,
    SHORT_NAME,
    SINGULAR,
    SPEC_RULES,
    VERSION,
    FederatedFinetuneSpec,
    FederatedFinetuneStatus,
)

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Overall phase."},
    {"name": "Round", "type": "integer", "jsonPath": ".status.round", "description": "Rounds completed."},
    {"name": "Silos", "type": "string", "jsonPath": ".status.silosReady", "description": "Silos ready / all."},
    {"name": "Fairness", "type": "number", "jsonPath": ".status.fairnessGap", "description": "Max - min silo AUC."},
    {"name": "Epsilon", "type": "number", "jsonPath": ".status.epsilon", "description": "Largest epsilon spent.", "priority": 1},
    {"name": "Epsilon-Unit", "type": "string", "jsonPath": ".status.epsilonUnit", "description": "What epsilon protects: silo, record or user.",
     "priority": 1},
    {"name": "Rounds", "type": "integer", "jsonPath": ".spec.rounds", "description": "Rounds requested.", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
UNLEARNING_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Overall phase."},
    {"name": "Finetune", "type": "string", "jsonPath": ".spec.finetune", "description": "The FederatedFinetune."},
    {"name": "Silo", "type": "string", "jsonPath": ".spec.silo", "description": "The forgetting silo."},
    {"name": "Users", "type": "integer", "jsonPath": ".status.usersCount", "description": "Users forgotten."},
    {"name": "Applied", "type": "string", "jsonPath": ".status.appliedSilos", "description": "Silos that applied it / all."},
    {"name": "Forget-AUC", "type": "number", "jsonPath": ".status.forgetAucAfter", "description": "AUC on the forgotten records after.",
     "priority": 1},
    {"name": "Test-AUC", "type": "number", "jsonPath": ".status.testAucAfter", "description": "Held-out AUC after.", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
MEMBERSHIP_PRINTER_COLUMNS = [
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _structural(node: Any, defs: dict) -> Any:
    """Pydantic JSON Schema -> a Kubernetes structural OpenAPI v3 schema."""
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        target.update(node)  # siblings (description, default) win over the definition's
        node = target
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        options = [o for o in any_of if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {len(options)} types structurally")
        merged = dict(options[0])
        merged.update(node)
        merged["nullable"] = True
        node = merged
        if "$ref" in node:
            return _structural(node, defs)
    node.pop("title", None)
    if node.get("additionalProperties") is False:
        node.pop("additionalProperties")
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in node and not isinstance(node[bound], bool):
            node["minimum" if bound == "exclusiveMinimum" else "maximum"] = node[bound]
            node[bound] = True
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    return out


def model_schema(model: type[BaseModel]) -> dict:
    raw = model.model_json_schema(by_alias=True)
    defs = raw.pop("$defs", {})
    return _structural(raw, defs)


def spec_schema() -> dict:
    schema = model_schema(FederatedFinetuneSpec)
    for name in IMMUTABLE:
        schema["properties"][name]["x-kubernetes-validations"] = [{"rule": "self == oldSelf", "message": f"spec.{name} is immutable"}]
    silos = schema["properties"]["silos"]
    silos["x-kubernetes-list-type"] = "map"  # the API server keeps silo names unique
    silos["x-kubernetes-list-map-keys"] = ["name"]
    schema["x-kubernetes-validations"] = [r for r in SPEC_RULES if "exists_one" not in r["rule"]]
    return schema


def unlearning_spec_schema() -> dict:
    schema = model_schema(fu.FederatedUnlearningSpec)
    schema["properties"]["forget"]["x-kubernetes-validations"] = fu.FORGET_RULES
    schema["x-kubernetes-validations"] = [{"rule": "self == oldSelf", "message": "spec is immutable"}]
    return schema


def _crd(names: tuple[str, str, str, str], description: str, spec: dict, status_model: type[BaseModel] | None, columns: list[dict]) -> dict:
    kind, plural, singular, short_name = names
    properties = {
        "apiVersion": {"type": "string", "description": "API version of this object."},
        "kind": {"type": "string", "description": "Kind of this object."},
        "metadata": {"type": "object"},
        "spec": spec,
    }
    if status_model is not None:
        properties["status"] = model_schema(status_model)
        properties["status"]["description"] = "Observed state, written by the operator."
    version = {"name": VERSION, "served": True, "storage": True}
    if status_model is not None:
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = columns
    version["schema"] = {"openAPIV3Schema": {"type": "object", "description": description, "required": ["spec"], "properties": properties}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "fedshield"}},
        "spec": {
            "group": GROUP,
            "names": {"kind": kind, "plural": plural, "singular": singular, "shortNames": [short_name], "categories": ["fedshield"]},
            "scope": "Namespaced",
            "versions": [version],
        },
    }


def crd() -> dict:
    return _crd((KIND, PLURAL, SINGULAR, SHORT_NAME),
                "A federated LoRA fine-tuning run across organisations, aggregated under homomorphic encryption.",
                spec_schema(), FederatedFinetuneStatus, PRINTER_COLUMNS)


def unlearning_crd() -> dict:
    return _crd((fu.KIND, fu.PLURAL, fu.SINGULAR, fu.SHORT_NAME),
                "Forget users at one silo of a finished FederatedFinetune (E2URec); every silo then gets the new global adapter.",
                unlearning_spec_schema(), fu.FederatedUnlearningStatus, UNLEARNING_PRINTER_COLUMNS)


def membership_crd() -> dict:
    return _crd((fm.KIND, fm.PLURAL, fm.SINGULAR, fm.SHORT_NAME),
                "An organisation's consent, created by the admin of a silo namespace: which FederatedFinetunes may run a silo here, "
                "and with which images, Secrets, volumes, accounts, scheduling settings and resource caps.",
                model_schema(fm.FederationMembershipSpec), None, MEMBERSHIP_PRINTER_COLUMNS)


KINDS = {"finetune": (crd, "fedshield/api/models.py", ""), "unlearning": (unlearning_crd, "fedshield/api/unlearning.py", " --kind unlearning"),
         "membership": (membership_crd, "fedshield/api/membership.py", " --kind membership")}


def crd_yaml(kind: str = "finetune") -> str:
    build, source, flag = KINDS[kind]
    header = f"# Generated by `fedshield crd{flag}` from {source}. Do not edit by hand.\n"
    return header + yaml.safe_dump(build(), sort_keys=False, width=120)
