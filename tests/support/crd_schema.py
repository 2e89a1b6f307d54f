"""Validate objects against the generated CRD's openAPIV3Schema with a JSON Schema validator."""

from __future__ import annotations

import copy

import jsonschema

from fedshield.api.crd import crd


def to_jsonschema(node):
    """OpenAPI v3 (nullable, x-kubernetes-*) -> JSON Schema the validator understands. CEL rules are not evaluated."""
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.pop("nullable", False) and "type" in node:
        node["type"] = [node["type"], "null"]
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if node.get(bound) is True:
            node[bound] = node.pop("minimum" if bound == "exclusiveMinimum" else "maximum")
    if "properties" in node:
        node.setdefault("additionalProperties", False)  # structural pruning would drop unknown fields: flag them here
    return node


def schema_nodes(node: dict, path: str = "spec"):
    """Every (path, node) of an OpenAPI schema: properties and list items, depth first."""
    yield path, node
    for name, prop in node.get("properties", {}).items():
        yield from schema_nodes(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")


def crd_validator() -> jsonschema.Draft202012Validator:
    schema = to_jsonschema(copy.deepcopy(crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft202012Validator(schema)


def cel_refusals(spec: dict) -> list[str]:
    """The messages of the CRD's spec-level CEL rules that ``spec`` breaks, evaluated by cel-python (a test dependency)."""
    import celpy

    rules = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
    env = celpy.Environment()
    return [r["message"] for r in rules if not bool(env.program(env.compile(r["rule"])).evaluate({"self": celpy.json_to_cel(spec)}))]
