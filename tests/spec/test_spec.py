"""fedshield/spec: every setting once, and the same settings everywhere (CR, YAML config, pods, CLI, docs)."""

import argparse
import copy
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import BaseModel

from fedshield.aggregator.rounds import Coordinator
from fedshield.aggregator.store import Store
from fedshield.api.crd import crd, unlearning_crd
from fedshield.api.models import FederatedFinetuneSpec
from fedshield.api.unlearning import FederatedUnlearningSpec
from fedshield.cli import build_parser
from fedshield.crypto.params import CkksParams
from fedshield.operator.manifests import Owner, desired_children, federation_config
from fedshield.operator.unlearning import Target, unlearning_job
from fedshield.spec import FederationConfig, FederationSettings, UnlearningSpec, load_config
from fedshield.spec.commands import add_spec_arguments, spec_flags, spec_from_args
from fedshield.spec.docs import DOC, settings, settings_markdown
from fedshield.spec.federation import PLACED_BY_OPERATOR, SiloSpec
from fedshield.updates import kept_count, round_mask
from fedshield.wire.messages import RoundPlan

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "examples" / "federatedfinetune.yaml").read_text())
UNLEARNING_EXAMPLE = yaml.safe_load((ROOT / "examples" / "federatedunlearning.yaml").read_text())
OWNER = Owner("triage-notes", "fedshield", "0b9c7a34-1111-2222-3333-444455556666")


def _models(model: type[BaseModel], seen: set | None = None) -> set[type[BaseModel]]:
    from fedshield.spec.docs import _nested

    seen = set() if seen is None else seen
    seen.add(model)
    for info in model.model_fields.values():
        inner, _ = _nested(info.annotation)
        if inner is not None and inner not in seen:
            _models(inner, seen)
    return seen


def _crd_paths(node: dict, prefix: str = "") -> set[str]:
    """Leaf setting paths of a CRD schema (``silos[].name``)."""
    if node.get("type") == "object" and "properties" in node:
        return {p for name, prop in node["properties"].items() for p in _crd_paths(prop, f"{prefix}{name}.")}
    if node.get("type") == "array" and node.get("items", {}).get("type") == "object":
        return _crd_paths(node["items"], f"{prefix[:-1]}[].")
    return {prefix[:-1]}


def _spec_schema(build) -> dict:
    return build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_every_setting_has_one_default_and_a_description():
    models = _models(FederationConfig) | _models(UnlearningSpec) | _models(FederatedFinetuneSpec) | _models(FederatedUnlearningSpec)
    for model in models:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
    # One default: each setting is declared in one class; the CR and the config inherit the same sections, never redeclare them.
    for name in FederationSettings.model_fields:
        assert FederationConfig.model_fields[name].annotation is FederatedFinetuneSpec.model_fields[name].annotation, name
        assert FederationConfig.model_fields[name].get_default(call_default_factory=True) == \
            FederatedFinetuneSpec.model_fields[name].get_default(call_default_factory=True), name
    for sub, base in ((FederatedFinetuneSpec, FederationSettings), (FederationConfig, FederationSettings),
                      (FederatedUnlearningSpec, UnlearningSpec)):
        assert issubclass(sub, base) and not set(sub.__annotations__) & set(base.model_fields), sub
    from fedshield.api.models import SiloPlacement

    assert issubclass(SiloPlacement, SiloSpec) and not set(SiloPlacement.__annotations__) & set(SiloSpec.model_fields)


def test_the_cr_and_the_yaml_config_accept_the_same_settings():
    camel = {snake: cr for snake, cr, _, _ in settings(FederationConfig)}
    placed = {camel[s] for s in PLACED_BY_OPERATOR}
    cr = _crd_paths(_spec_schema(crd))
    assert set(camel.values()) - placed <= cr, "a config setting a CR cannot set"
    assert placed & cr == {"data.path", "silos[].metricsPort", "silos[].dataPath"}  # in the schema (shared section), refused by rules
    sections = {FederationSettings.model_fields[n].alias or n for n in FederationSettings.model_fields}
    placement = cr - set(camel.values())
    assert placement and not {p.split(".")[0] for p in placement} & sections, "a CR-only field inside a settings section"
    unlearning = _crd_paths(_spec_schema(unlearning_crd))
    assert {cr for _, cr, _, _ in settings(UnlearningSpec)} <= unlearning


def test_placed_settings_are_refused_in_a_cr():
    with pytest.raises(ValueError, match="data.path"):
        FederatedFinetuneSpec.model_validate(dict(EXAMPLE["spec"], data={"path": "/elsewhere"}))
    silos = [dict(EXAMPLE["spec"]["silos"][0], metricsPort=1234), *EXAMPLE["spec"]["silos"][1:]]
    with pytest.raises(ValueError, match="metricsPort"):
        FederatedFinetuneSpec.model_validate(dict(EXAMPLE["spec"], silos=silos))
    silos = [dict(EXAMPLE["spec"]["silos"][0], dataPath="/elsewhere"), *EXAMPLE["spec"]["silos"][1:]]
    with pytest.raises(ValueError, match="dataPath"):
        FederatedFinetuneSpec.model_validate(dict(EXAMPLE["spec"], silos=silos))


def _every_setting_changed() -> dict:
    spec = copy.deepcopy(EXAMPLE["spec"])
    spec.update(rounds=7, seed=3, maxUploadBytes=1 << 20, limits={"maxConcurrentUploads": 3, "observerBurst": 4},
                workload="instruction", data={"seed": 5, "history": 4, "valFraction": 0.25, "maxLabelTokens": 4})
    spec["aggregation"] = {"strategy": "dynamic_balance", "q": 2.0, "gamma": 0.5, "minSilos": 2, "roundDeadlineSeconds": 120.0,
                           "maxWeight": 0.6, "uploadRetentionRounds": 2}
    spec["privacy"] = {"pruning": 0.37, "exploreShare": 0.25, "packing": {"valueBound": 0.125, "maxSilos": 20},
                       "encryption": {"scaleBits": 18}, "privateModules": ["*.layers.0.*"], "unlearningBound": 2.0,
                       "unlearningApprovals": 1, "dp": {"enabled": True, "targetEpsilon": 8.0, "epsilonBudget": 6.0}}
    spec["silos"] = [dict(s, samples=100 + i, epsilonBudget=4.0 + i) for i, s in enumerate(spec["silos"])]
    return spec


def test_a_cr_reaches_the_pods_config_unchanged():
    raw = _every_setting_changed()
    spec = FederatedFinetuneSpec.model_validate(raw)
    plan = next(c for c in desired_children(OWNER, spec) if c["kind"] == "ConfigMap")["data"]["config.yaml"]
    pod = yaml.safe_load(plan)
    dumped = spec.model_dump(mode="json", by_alias=True)
    for name in FederationSettings.model_fields:
        key = FederationSettings.model_fields[name].alias or name
        assert pod[key] == dumped[key], key
    assert [s["dataPath"] for s in pod["silos"]] == [f"/data/{s['name']}" for s in raw["silos"]]  # where each pod mounts its data
    for section, values in raw.items():  # what the CR said, key for key
        if isinstance(values, dict) and section in pod:
            for key, value in values.items():
                assert pod[section][key] == value or (isinstance(value, dict) and value.items() <= pod[section][key].items()), (section, key)
    assert [(s["name"], s["samples"], s["epsilonBudget"]) for s in pod["silos"]] == \
        [(s["name"], s["samples"], s["epsilonBudget"]) for s in raw["silos"]]
    assert FederationConfig.model_validate(pod) == federation_config(OWNER, spec)


def test_pruning_set_in_a_cr_reaches_the_mask(tmp_path, public_keys):
    """CR -> (1) the pods' ConfigMap -> (2) the aggregator's config -> (3) the round plan on the wire -> (4) the silo's mask."""
    raw = dict(EXAMPLE["spec"], privacy=dict(EXAMPLE["spec"]["privacy"], pruning=0.37))
    spec = FederatedFinetuneSpec.model_validate(raw)
    plan = next(c for c in desired_children(OWNER, spec) if c["kind"] == "ConfigMap")["data"]["config.yaml"]  # hop 1
    (tmp_path / "config.yaml").write_text(plan)
    config = load_config(tmp_path / "config.yaml")  # hop 2: what `fedshield aggregator/silo --config` loads
    coordinator = Coordinator(config, public_keys, Store(tmp_path / "state"))
    wire = RoundPlan.model_validate_json(coordinator.plan().model_dump_json())  # hop 3: GET /v1/plan
    mask = round_mask(10_000, wire.pruning, 0, wire.mask_seed)  # hop 4: SiloAgent._mask
    assert config.privacy.pruning == wire.pruning == 0.37 and mask.size == kept_count(10_000, 0.37) == 6300
    assert isinstance(np.asarray(mask), np.ndarray)


def test_encryption_is_checked_against_the_keys_at_start(tmp_path, public_keys):
    config = FederationConfig(privacy={"encryption": {"scaleBits": 20}})
    with pytest.raises(ValueError, match="privacy.encryption .* scale_bits=18"):
        Coordinator(config, public_keys, Store(tmp_path / "state"))
    FederationConfig(privacy={"encryption": {"scaleBits": 18}}).check_keys(CkksParams())
    FederationConfig().check_keys(CkksParams(scale_bits=20))  # unset: not checked


def test_yaml_configs_load_in_either_spelling():
    snake = FederationConfig.model_validate({"aggregation": {"min_silos": 3, "round_deadline_seconds": 5}})
    camel = FederationConfig.model_validate({"aggregation": {"minSilos": 3, "roundDeadlineSeconds": 5}})
    assert snake == camel
    assert load_config(ROOT / "examples" / "federation.yaml").silo_names
    silo = SiloSpec(name="a")
    with pytest.raises(ValueError):
        SiloSpec(name="Not_A_Label")
    assert silo.name == "a"


def test_commands_parse_with_the_cli_and_unlearning_flags_round_trip():
    parser = build_parser()
    spec = UnlearningSpec(alpha=1.5, steps=7, augment_steps=3, target_modules=("q_proj", "v_proj"), seed=2)
    sub = argparse.ArgumentParser()
    add_spec_arguments(sub, UnlearningSpec)
    assert spec_from_args(sub.parse_args(spec_flags(spec)), UnlearningSpec) == spec
    assert spec_from_args(sub.parse_args([]), UnlearningSpec) == UnlearningSpec()  # defaults: the spec's, nowhere else
    cr = FederatedUnlearningSpec.model_validate(dict(UNLEARNING_EXAMPLE["spec"], augmentSteps=4, learningRate=0.01))
    ft = FederatedFinetuneSpec.model_validate(EXAMPLE["spec"])
    target = Target("forget-1", "fedshield", "uid-1")
    job = unlearning_job(target, OWNER, ft, cr)
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    args = parser.parse_args(command[1:])
    assert spec_from_args(args, UnlearningSpec) == UnlearningSpec.model_validate(cr.model_dump(include=set(UnlearningSpec.model_fields)))
    torchrun = 0
    for child in desired_children(OWNER, ft):
        for container in child.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            command = container["command"]
            if command[:3] == ["python", "-m", "torch.distributed.run"]:  # hospital-b's 2 GPUs: a rank each
                command, torchrun = command[command.index("fedshield.cli"):], torchrun + 1
            parser.parse_args(command[1:])
    assert torchrun == 1


def test_docs_settings_table_is_generated_from_the_spec():
    assert DOC.read_text(encoding="utf-8") == settings_markdown(), "run `python -m fedshield.spec.docs`"


def test_silo_nodes_is_one_setting_of_the_local_spec_and_the_cr():
    from fedshield.api.models import SiloPlacement

    assert "nodes" not in SiloPlacement.__annotations__ and "nodes" in SiloSpec.__annotations__  # defined once, inherited
    assert repr(SiloPlacement.model_fields["nodes"]) == repr(SiloSpec.model_fields["nodes"])
    assert FederationConfig().silos[0].nodes == 1
    config = FederationConfig(silos=(SiloSpec(name="a", nodes=2), SiloSpec(name="b")))
    assert load_config_text(config).silos[0].nodes == 2


def load_config_text(config: FederationConfig) -> FederationConfig:
    from fedshield.spec.federation import config_yaml

    return FederationConfig.model_validate(yaml.safe_load(config_yaml(config)))


@pytest.mark.parametrize("settings, message", [
    ({"privacy": {"dp": {"enabled": True, "unit": "record", "noise_multiplier": 1.0}}}, r"DP-SGD\) needs one-process silos: .* \(silos a\)"),
    ({"privacy": {"dp": {"enabled": True, "unit": "user", "noise_multiplier": 1.0}}}, r"DP-SGD\) needs one-process silos: .* \(silos a\)"),
    ({"training": {"batch_size": 9}}, r"training.batchSize \(batch_size=9\) must divide by the world size of each multi-rank silo "
                                      r"\(.*world size = nodes in a local run.*\): a \(2 nodes: 2 ranks\) \["),
])
def test_multi_node_silos_refuse_dp_sgd_and_uneven_batches(settings, message):
    from fedshield.api.models import MULTI_NODE_DP_SGD_MESSAGE
    from fedshield.spec.federation import MULTI_NODE_DP_SGD_MESSAGE as SPEC_MESSAGE

    assert MULTI_NODE_DP_SGD_MESSAGE is SPEC_MESSAGE
    silos = (SiloSpec(name="a", nodes=2), SiloSpec(name="b"))
    with pytest.raises(ValueError, match=message):
        FederationConfig.model_validate({**settings, "silos": [s.model_dump() for s in silos]})
    FederationConfig.model_validate({**settings, "silos": [{"name": "a"}, {"name": "b"}]})  # fine with one node each
    assert FederationConfig(silos=silos, training={"batch_size": 8}).silos[0].nodes == 2
