"""Build the `FederatedFinetune` CustomResourceDefinition from the pydantic models.

`fedshield crd` prints it; the chart carries the same bytes (a test compares them).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from .models import (
    GROUP, IMMUTABLE, KIND, PLURAL, SHORT_NAME, SINGULAR, SPEC_RULES, VERSION, FederatedFinetuneSpec, FederatedFinetuneStatus,
)

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Overall phase."},
    {"name": "Round", "type": "integer", "jsonPath": ".status.round", "description": "Rounds completed."},
    {"name": "Silos", "type": "string", "jsonPath": ".status.silosReady", "description": "Silos ready / all."},
    {"name": "Fairness", "type": "number", "jsonPath": ".status.fairnessGap", "description": "Max - min silo AUC."},
    {"name": "Epsilon", "type": "number", "jsonPath": ".status.epsilon", "description": "Largest epsilon spent.", "priority": 1},
    {"name": "Rounds", "type": "integer", "jsonPath": ".spec.rounds", "description": "Rounds requested.", "priority": 1},
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


def model_schema(model: type) -> dict:
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


def crd() -> dict:
    status = model_schema(FederatedFinetuneStatus)
    status["description"] = "Observed state, written by the operator."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "fedshield"}},
        "spec": {
            "group": GROUP,
            "names": {"kind": KIND, "plural": PLURAL, "singular": SINGULAR, "shortNames": [SHORT_NAME], "categories": ["fedshield"]},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A federated LoRA fine-tuning run across organisations, aggregated under homomorphic encryption.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string", "description": "API version of this object."},
                        "kind": {"type": "string", "description": "Kind of this object."},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(),
                        "status": status,
                    },
                }},
            }],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `fedshield crd` from fedshield/api/models.py. Do not edit by hand.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)
