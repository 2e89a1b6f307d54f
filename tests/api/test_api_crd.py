import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from support.crd_schema import cel_refusals, crd_validator, schema_nodes

from fedshield.api.crd import crd, crd_yaml
from fedshield.api.models import IMMUTABLE, INSECURE_MESSAGE, FederatedFinetuneSpec
from fedshield.cli import main

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "charts" / "fedshield-operator" / "crds" / "federatedfinetunes.yaml"
EXAMPLE = yaml.safe_load((ROOT / "examples" / "federatedfinetune.yaml").read_text())


def test_checked_in_crd_is_the_generated_one():
    assert CHECKED_IN.read_text() == crd_yaml(), "run `fedshield crd > charts/fedshield-operator/crds/federatedfinetunes.yaml`"


def test_crd_command_prints_it(capsys):
    assert main(["crd"]) == 0
    assert capsys.readouterr().out == crd_yaml()


def test_schema_is_structural_and_every_field_is_described():
    version = crd()["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    for part in ("spec", "status"):
        for path, node in schema_nodes(root["properties"][part], part):
            assert "type" in node, f"{path} has no type"
            assert path.endswith("[]") or node.get("description"), f"{path} has no description (kubectl explain)"
            assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
    spec = root["properties"]["spec"]
    for name in IMMUTABLE:
        assert {"rule": "self == oldSelf", "message": f"spec.{name} is immutable"} in spec["properties"][name]["x-kubernetes-validations"]
    assert spec["properties"]["silos"]["x-kubernetes-list-map-keys"] == ["name"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase" and columns["Round"] == ".status.round"
    assert columns["Silos"] == ".status.silosReady" and columns["Fairness"] == ".status.fairnessGap"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_example_cr_validates_against_the_crd_and_the_models():
    errors = list(crd_validator().iter_errors(EXAMPLE))
    assert not errors, [e.message for e in errors]
    spec = FederatedFinetuneSpec.model_validate(EXAMPLE["spec"])
    assert [s.namespace for s in spec.silos] == ["org-hospital-a", "org-hospital-b", "org-clinic-c"]


def _with(path: str, value):
    spec = copy.deepcopy(EXAMPLE["spec"])
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is DELETE:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return spec


DELETE = object()
# (field path, bad value, text the error must contain, also refused by the CRD's structural schema)
INVALID = [
    ("rounds", 0, "rounds", True),
    ("rounds", "ten", "rounds", True),
    ("lora.r", 0, "r", True),
    ("lora.dropout", 1.5, "dropout", True),
    ("lora.targetModules", [], "targetModules", True),
    ("training.learningRate", 0, "learningRate", True),
    ("training.zeroStage", 4, "zeroStage", True),
    ("training.precision", "int8", "precision", True),
    ("aggregation.strategy", "median", "strategy", True),
    ("aggregation.minSilos", 0, "minSilos", True),
    ("aggregation.minSilos", 5, "minSilos", False),  # CEL rule in the CRD
    ("aggregation.roundDeadlineSeconds", 0, "roundDeadlineSeconds", True),
    ("privacy.pruning", 1.0, "pruning", True),
    ("privacy.encryption", {"polyModulusDegree": 4096}, "polyModulusDegree", True),
    ("privacy.dp", {"enabled": True}, "privacy.dp", False),  # CEL rule
    ("privacy.dp", {"enabled": True, "noiseMultiplier": 1.0, "targetEpsilon": 8.0}, "privacy.dp", False),
    ("privacy.dp", {"delta": 2}, "delta", True),
    ("silos", [], "silos", True),
    ("silos.0.name", "Hospital_A", "name", True),
    ("silos.0.namespace", "-bad", "namespace", True),
    ("silos.0.gpus", -1, "gpus", True),
    ("silos.0.memory", "lots", "memory", True),
    ("silos.0.keySecret", DELETE, "keySecret", True),
    ("silos.0.datasetVolume", DELETE, "datasetVolume", True),
    ("silos.0.tolerations", [{"operator": "Maybe"}], "operator", True),
    ("silos.1.name", "hospital-a", "names must be unique", False),  # list-map key in the CRD
    ("aggregator.serviceType", "ExternalName", "serviceType", True),
    ("aggregator", DELETE, "aggregator", True),
    ("baseModel.path", "", "path", True),
    ("unexpectedField", 1, "unexpectedField", True),
    ("activeDeadlineSeconds", 5, "activeDeadlineSeconds", True),
]


@pytest.mark.parametrize("path, value, message, structural", INVALID, ids=[f"{p}={v!r}"[:60] for p, v, _, _ in INVALID])
def test_invalid_spec_is_rejected_naming_the_field(path, value, message, structural):
    spec = _with(path, value)
    with pytest.raises(ValidationError) as info:
        FederatedFinetuneSpec.model_validate(spec)
    text = str(info.value)
    assert message in text, text
    if structural:
        assert list(crd_validator().iter_errors(dict(EXAMPLE, spec=spec))), f"the CRD schema accepted {path}={value!r}"


def test_enough_invalid_cases():
    assert len(INVALID) >= 20


def test_without_tls_the_spec_must_say_insecure_in_pydantic_and_the_crd():
    spec = copy.deepcopy(EXAMPLE["spec"])
    del spec["aggregator"]["tls"]
    for silo in spec["silos"]:
        del silo["tls"]
    with pytest.raises(ValidationError, match="set insecure: true to run without transport security"):
        FederatedFinetuneSpec.model_validate(spec)
    assert FederatedFinetuneSpec.model_validate(dict(spec, insecure=True)).insecure
    rules = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
    assert {"rule": "has(self.aggregator.tls) || (has(self.insecure) && self.insecure)",
            "message": INSECURE_MESSAGE} in rules


# A multi-node silo's world size is nodes x max(1, gpusPerNode) ranks (gpusPerNode defaults to gpus, gpus to 1); a one-node
# silo runs one process. (silo 0's fields, training.batchSize or None for the default 16, its world size, accepted)
WORLD_SIZE_CASES = [
    ({"nodes": 2}, 16, 2, True),  # gpus: 1 in the example
    ({"nodes": 2}, 9, 2, False),
    ({"nodes": 2, "gpusPerNode": 4}, 16, 8, True),
    ({"nodes": 2, "gpusPerNode": 4}, 12, 8, False),  # divides over the 2 nodes, not over the 8 ranks
    ({"nodes": 2, "gpus": 4}, 12, 8, False),  # gpusPerNode defaults to gpus
    ({"nodes": 2, "gpusPerNode": 0, "gpus": 0}, 6, 2, True),  # CPU-only pods: one rank each
    ({"nodes": 3, "gpus": 2}, 192, 6, True),
    ({"nodes": 3, "gpus": 2}, 8, 6, False),
    ({"nodes": 4, "gpusPerNode": 8}, None, 32, False),  # the default batch of 16
    ({"nodes": 2, "gpusPerNode": 8}, None, 16, True),
    ({"nodes": 1, "gpus": 4}, 6, 4, False),  # one node: a rank per GPU as well
    ({"nodes": 1, "gpus": 4}, 8, 4, True),
    ({"gpus": 2}, 5, 2, False),
    ({"gpus": 0}, 6, 1, True),  # a CPU-only pod: one process (hospital-b's 2 GPUs: 2 ranks, 6 splits)
    ({"gpus": 4}, 6, 4, False),
]


def _world_spec(silo0: dict, batch: int | None) -> dict:
    spec = copy.deepcopy(EXAMPLE["spec"])
    spec["silos"][0].update(silo0)
    if "gpus" not in silo0 and silo0.get("gpusPerNode") is not None:
        spec["silos"][0].pop("gpus", None)
    training = {k: v for k, v in spec.get("training", {}).items() if k != "batchSize"}
    spec["training"] = training if batch is None else dict(training, batchSize=batch)
    return spec


@pytest.mark.parametrize("silo0, batch, world, accepted", WORLD_SIZE_CASES, ids=[f"{s}-b{b}" for s, b, _, _ in WORLD_SIZE_CASES])
def test_batch_size_must_divide_by_each_multi_node_silos_world_size(silo0, batch, world, accepted):
    spec = _world_spec(silo0, batch)
    if accepted:
        assert FederatedFinetuneSpec.model_validate(spec).silos[0].ranks == world
        return
    with pytest.raises(ValidationError) as info:
        FederatedFinetuneSpec.model_validate(spec)
    nodes = silo0.get("nodes", 1)
    per_node = world // nodes
    assert (f"training.batchSize (batch_size={batch or 16}) must divide by the world size of each multi-rank silo" in str(info.value)
            and f"hospital-a ({nodes} nodes x {per_node} GPUs per node: {world} ranks)" in str(info.value)), str(info.value)


def test_the_crds_cel_rules_agree_with_the_validator_on_world_sizes():
    """Every CEL rule of spec, evaluated by cel-python (a test dependency), on the example and the cases."""
    from fedshield.api.models import UNEVEN_BATCH_RULE_MESSAGE

    assert "world size" in UNEVEN_BATCH_RULE_MESSAGE
    refused = cel_refusals
    assert refused(EXAMPLE["spec"]) == []
    for silo0, batch, _, accepted in WORLD_SIZE_CASES:
        assert refused(_world_spec(silo0, batch)) == ([] if accepted else [UNEVEN_BATCH_RULE_MESSAGE]), (silo0, batch)
