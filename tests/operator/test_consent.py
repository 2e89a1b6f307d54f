"""Consent (pure): a FederationMembership admits a silo exactly as specified, or says what it does not allow."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import ValidationError
from support.crd_schema import to_jsonschema

from fedshield.api.crd import crd_yaml, membership_crd
from fedshield.api.membership import FederationMembershipSpec
from fedshield.api.models import FederatedFinetuneSpec
from fedshield.operator import consent

ROOT = Path(__file__).resolve().parents[2]
FINETUNE = yaml.safe_load((ROOT / "examples" / "federatedfinetune.yaml").read_text())
MEMBERSHIP = yaml.safe_load((ROOT / "examples" / "federationmembership.yaml").read_text())
SPEC = FederatedFinetuneSpec.model_validate(FINETUNE["spec"])
FED = ("fedshield", "triage-notes")


def test_checked_in_crd_is_the_generated_one_and_the_example_validates():
    assert (ROOT / "charts" / "fedshield-operator" / "crds" / "federationmemberships.yaml").read_text() == crd_yaml("membership")
    schema = to_jsonschema(copy.deepcopy(membership_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))
    schema["properties"]["metadata"] = {"type": "object"}
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(MEMBERSHIP))
    FederationMembershipSpec.model_validate(MEMBERSHIP["spec"])
    assert "status" not in membership_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]  # the operator never writes it


@pytest.mark.parametrize("change", [{"federations": []}, {"imagePrefixes": []}, {"secrets": ["Bad_Name"]}, {"limits": {"gpus": -1}},
                                    {"limits": {"memory": "lots"}}, {"unknown": 1}])
def test_invalid_memberships_are_refused_by_pydantic(change):
    with pytest.raises(ValidationError):
        FederationMembershipSpec.model_validate(dict(MEMBERSHIP["spec"], **change))


def test_the_example_membership_admits_the_example_silo_and_nothing_else():
    assert consent.check_silo(FED, SPEC, SPEC.silos[0], [MEMBERSHIP]) is None
    assert consent.check(FED, SPEC, {"org-hospital-a": [MEMBERSHIP]}, [SPEC.silos[0]]) == []
    # hospital-b is not admitted by hospital-a's membership: its namespace has none
    assert consent.check(FED, SPEC, {"org-hospital-a": [MEMBERSHIP]}) == [
        'silo hospital-b: namespace "org-hospital-b" has no FederationMembership admitting FederatedFinetune fedshield/triage-notes',
        'silo clinic-c: namespace "org-clinic-c" has no FederationMembership admitting FederatedFinetune fedshield/triage-notes']
    assert "no FederationMembership" in consent.check_silo(("other", "triage-notes"), SPEC, SPEC.silos[0], [MEMBERSHIP])


def test_every_problem_is_named_and_another_membership_may_admit():
    silo = SPEC.silos[0].model_copy(update={"name": "hospital-z", "image": "evil/miner:1", "cpu": "64", "state_size": "1Ti",
                                            "runtime_class_name": "kata", "gpu_resource": "amd.com/gpu"})
    message = consent.check_silo(FED, SPEC, silo, [MEMBERSHIP])
    for part in ("silo name 'hospital-z'", "image 'evil/miner:1'", "RuntimeClass 'kata'", "GPU resource 'amd.com/gpu'",
                 "cpu 64 (cap 8)", "stateSize 1Ti (cap 50Gi)"):
        assert part in message, part
    broad = copy.deepcopy(MEMBERSHIP)
    broad["metadata"]["name"] = "zz-broad"
    broad["spec"] = {"federations": MEMBERSHIP["spec"]["federations"], "imagePrefixes": ["evil/"], "secrets": ["fedshield-keys", "fedshield-silo-tls"],
                     "persistentVolumeClaims": ["triage-data", "base-models"], "runtimeClasses": ["kata"],
                     "tolerations": MEMBERSHIP["spec"]["tolerations"]}
    assert consent.check_silo(FED, SPEC, silo, [MEMBERSHIP, broad]) is None
    broken = dict(broad, spec={"federations": "nope"})  # an invalid membership grants nothing
    assert consent.check_silo(FED, SPEC, silo, [broken]).endswith("has no FederationMembership admitting FederatedFinetune fedshield/triage-notes")
