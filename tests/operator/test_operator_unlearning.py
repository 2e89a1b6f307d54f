"""FederatedUnlearning: the CRD from pydantic, the pure builders and status, and the real kopf operator on kmock's emulator."""

from __future__ import annotations

import asyncio
import copy
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError
from support.aggregator_harness import RunningAggregator
from support.aggregator_status import status_of
from support.crd_schema import schema_nodes, to_jsonschema
from support.kube_emulator import CONFIGMAPS, CR, JOBS, MERGE, UNLEARNING_CR, writes_in
from support.operator_harness import alive, consent, eventually, raw, running_operator

from fedshield.api import unlearning as fu_api
from fedshield.api.crd import crd_yaml, unlearning_crd
from fedshield.api.models import FederatedFinetuneSpec
from fedshield.api.unlearning import FederatedUnlearningSpec
from fedshield.cli import main
from fedshield.config import FederationConfig
from fedshield.config import SiloSpec as ConfigSilo
from fedshield.operator import unlearning as fu
from fedshield.operator.aggregator_http import CA_ENV, CERT_ENV, KEY_ENV
from fedshield.operator.manifests import STATE_DIR, Owner, aggregator_url, silo_job, silo_job_name
from fedshield.security.auth import Authenticator, observer_uri
from fedshield.security.certs import issue_all, issue_observer
from fedshield.security.tls import ServerTLS
from fedshield.wire.messages import Status
from fedshield.wire.unlearning import PendingUnlearning, UnlearningAudit, UnlearningRecord

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "charts" / "fedshield-operator" / "crds" / "federatedunlearnings.yaml"
FINETUNE = yaml.safe_load((ROOT / "examples" / "federatedfinetune.yaml").read_text())
EXAMPLE = yaml.safe_load((ROOT / "examples" / "federatedunlearning.yaml").read_text())
NS, NAME, FT_NAME = EXAMPLE["metadata"]["namespace"], EXAMPLE["metadata"]["name"], FINETUNE["metadata"]["name"]
SILO_NS = {s["name"]: s["namespace"] for s in FINETUNE["spec"]["silos"]}
FT_SPEC = FederatedFinetuneSpec.model_validate(FINETUNE["spec"])
FT_OWNER = Owner(FT_NAME, NS, "0b9c7a34-1111-2222-3333-444455556666")
TARGET = fu.Target(NAME, NS, "7f00aa11-2222-3333-4444-555566667777")
K8S_VERSION = "1.34"
UNLEARN_JOB = fu.job_name(TARGET)
FORGET_CM = fu.forget_configmap_name(TARGET)


def spec_with(**forget) -> FederatedUnlearningSpec:
    return FederatedUnlearningSpec.model_validate(dict(EXAMPLE["spec"], forget=forget or EXAMPLE["spec"]["forget"]))


def record(version: int, silo: str, before: int, **audit) -> UnlearningRecord:
    audit = UnlearningAudit(requested_by="dpo", users_count=2, users_sha256="ab" * 32, requested_at=1.0, seconds=12.5,
                            forget_auc_before=0.91, forget_auc_after=0.52, test_auc_before=0.74, test_auc_after=0.73, **audit)
    return UnlearningRecord(version=version, silo=silo, adapter_version_before=before, adapter_version_after=before + 1,
                            sha256="cd" * 32, bytes=1000, received_at=2.0, audit=audit)


def pending(version: int, silo: str, approvals: list[str], needed: int = 1) -> PendingUnlearning:
    base = record(version, silo, 0)
    return PendingUnlearning(version=version, silo=silo, sha256="cd" * 32, bytes=1000, received_at=2.0, audit=base.audit,
                             approvals=approvals, needed=needed)


# --- the CRD ----------------------------------------------------------------------------------

def validator() -> jsonschema.Draft202012Validator:
    schema = to_jsonschema(copy.deepcopy(unlearning_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft202012Validator(schema)


def test_checked_in_crd_is_the_generated_one_and_the_cli_prints_it(capsys):
    assert CHECKED_IN.read_text() == crd_yaml("unlearning"), "run `fedshield crd --kind unlearning > " + str(CHECKED_IN.relative_to(ROOT)) + "`"
    assert main(["crd", "--kind", "unlearning"]) == 0
    assert capsys.readouterr().out == crd_yaml("unlearning")
    assert main(["crd"]) == 0 and "kind: FederatedFinetune\n" in capsys.readouterr().out  # the default is unchanged


def test_schema_is_structural_described_immutable_and_names_the_kind():
    crd = unlearning_crd()
    assert crd["spec"]["names"]["kind"] == "FederatedUnlearning" and crd["spec"]["names"]["shortNames"] == ["fu"]
    assert crd["spec"]["scope"] == "Namespaced" and crd["spec"]["group"] == "fedshield.io"
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    for part in ("spec", "status"):
        for path, node in schema_nodes(root["properties"][part], part):
            assert "type" in node, f"{path} has no type"
            assert path.endswith("[]") or node.get("description"), f"{path} has no description (kubectl explain)"
            assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
    spec = root["properties"]["spec"]
    assert spec["x-kubernetes-validations"] == [{"rule": "self == oldSelf", "message": "spec is immutable"}]
    assert spec["properties"]["forget"]["properties"]["users"]["minItems"] == 1
    assert spec["properties"]["forget"]["properties"]["users"]["items"]["minLength"] == 1
    assert any("has(self.users)" in r["rule"] and "== 1" in r["rule"] for r in spec["properties"]["forget"]["x-kubernetes-validations"])
    assert version["subresources"] == {"status": {}}


def _resolve(schema: dict, json_path: str) -> dict:
    node = schema
    for part in json_path.lstrip(".").split("."):
        node = node["properties"][part]
    return node


def test_printer_columns_point_at_typed_fields():
    version = unlearning_crd()["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert [n for n in columns if "priority" not in columns[n]] == ["Phase", "Finetune", "Silo", "Users", "Applied", "Age"]
    for column in columns.values():
        assert re.fullmatch(r"(\.[A-Za-z][A-Za-z0-9]*)+", column["jsonPath"]), column  # a simple field path, as kubectl needs
        if column["name"] == "Age":
            assert column["jsonPath"] == ".metadata.creationTimestamp" and column["type"] == "date"
            continue
        assert _resolve(root, column["jsonPath"])["type"] == column["type"], column


def test_example_validates_against_the_crd_and_the_models():
    errors = list(validator().iter_errors(EXAMPLE))
    assert not errors, [e.message for e in errors]
    assert spec_with().forget.users == ["patient-0193", "patient-2231"]


DELETE = object()
# (spec change, text pydantic's error must contain, also refused by the CRD's structural schema; False: by its CEL rules)
INVALID = [
    ({"forget": {"users": []}}, "forget.users", True),
    ({"forget": {"users": [""]}}, "forget.users", True),
    ({"forget": {"users": ["has space"]}}, "forget.users", True),
    ({"forget": {}}, "exactly one of users, configMap and path", False),
    ({"forget": {"users": ["u1"], "path": "forget.txt"}}, "exactly one of users, configMap and path", False),
    ({"forget": {"configMap": {"name": "req"}, "path": "x"}}, "configMap.key", True),
    ({"forget": {"configMap": {"name": "Bad_Name", "key": "k"}}}, "configMap.name", True),
    ({"forget": {"path": "/etc/passwd"}}, "forget.path", True),
    ({"forget": {"path": "a/../../b"}}, "no '..'", False),
    ({"forget": {"users": ["u1"], "extra": 1}}, "extra", True),
    ({"finetune": "Not_A_Name"}, "finetune", True),
    ({"silo": "-bad"}, "silo", True),
    ({"silo": DELETE}, "silo", True),
    ({"requestedBy": ""}, "requestedBy", True),
    ({"requestedBy": DELETE}, "requestedBy", True),
    ({"reason": "x" * 501}, "reason", True),
    ({"alpha": -1}, "alpha", True),
    ({"beta": 1.5}, "beta", True),
    ({"steps": 0}, "steps", True),
    ({"unexpected": 1}, "unexpected", True),
]


@pytest.mark.parametrize("change, message, structural", INVALID, ids=[repr(c)[:50] for c, _, _ in INVALID])
def test_invalid_spec_is_rejected_naming_the_field_by_pydantic_and_the_crd(change, message, structural):
    spec = copy.deepcopy(EXAMPLE["spec"])
    for key, value in change.items():
        if value is DELETE:
            del spec[key]
        else:
            spec[key] = value
    with pytest.raises(fu.Refused) as info:
        fu.parse_spec(spec)
    assert message in str(info.value) and str(info.value).startswith("spec."), str(info.value)
    with pytest.raises(ValidationError):
        FederatedUnlearningSpec.model_validate(spec)
    schema_errors = list(validator().iter_errors(dict(EXAMPLE, spec=spec)))
    if structural:
        assert schema_errors, f"the CRD schema accepted {change!r}"
    else:  # the structural schema lets it through; the CEL rule carrying pydantic's message refuses it
        rules = unlearning_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["forget"]
        assert any(message in r["message"] for r in rules["x-kubernetes-validations"])


# --- builders (pure) --------------------------------------------------------------------------

@pytest.mark.parametrize("forget", [EXAMPLE["spec"]["forget"], {"configMap": {"name": "gdpr", "key": "2026.txt"}}, {"path": "forget/1.txt"}],
                         ids=["users", "configMap", "path"])
def test_every_manifest_validates_strictly(forget):
    spec = spec_with(**forget)
    children = fu.unlearning_children(TARGET, FT_OWNER, FT_SPEC, spec) + fu.apply_jobs(TARGET, FT_OWNER, FT_SPEC, spec)
    assert [c["kind"] for c in children] == ["ConfigMap"] * ("users" in forget) + ["Job"] * 3
    for manifest in children:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_unlearning_job_is_the_silo_pod_with_the_unlearn_command_and_runs_only_at_the_silo():
    spec = spec_with()
    [configmap, job] = fu.unlearning_children(TARGET, FT_OWNER, FT_SPEC, spec)
    assert configmap["metadata"]["namespace"] == job["metadata"]["namespace"] == "org-hospital-a"
    assert configmap["data"] == {"users.txt": "patient-0193\npatient-2231\n"}
    training = silo_job(FT_OWNER, FT_SPEC, FT_SPEC.silos[0])["spec"]["template"]["spec"]
    pod = job["spec"]["template"]["spec"]
    container, trained = pod["containers"][0], training["containers"][0]
    # Same image, key Secret, state PVC, data, plan, security context and GPUs; only the command and the forget list differ.
    assert {k: v for k, v in container.items() if k not in ("command", "volumeMounts")} == \
        {k: v for k, v in trained.items() if k not in ("command", "volumeMounts")}
    assert container["volumeMounts"][:-1] == trained["volumeMounts"]
    assert {k: v for k, v in pod.items() if k != "volumes" and k != "containers"} == \
        {k: v for k, v in training.items() if k != "volumes" and k != "containers"}
    assert pod["volumes"][:-1] == training["volumes"]
    assert pod["volumes"][-1] == {"name": "forget", "configMap": {"name": FORGET_CM, "items": [{"key": "users.txt", "path": "users.txt"}]}}
    command = container["command"]
    assert command[:2] == ["fedshield", "unlearn"] and command[command.index("--silo") + 1] == "hospital-a"
    assert command[command.index("--users-file") + 1] == f"{fu.FORGET_DIR}/users.txt"
    assert command[command.index("--aggregator") + 1] == aggregator_url(FT_OWNER, tls=True)
    assert command[command.index("--requested-by") + 1] == "dpo@hospital-a.example"
    assert (command[command.index("--alpha") + 1], command[command.index("--beta") + 1], command[command.index("--steps") + 1]) == ("2.0", "0.4", "30")
    assert job["spec"]["backoffLimit"] == 0 and "ownerReferences" not in job["metadata"]
    labels = job["metadata"]["labels"]
    assert labels[fu.UNLEARNING_LABEL] == NAME and "fedshield.io/federation" not in labels  # not counted as a training Job
    assert "fedshield.io/federation" not in job["spec"]["template"]["metadata"]["labels"]


def test_configmap_and_path_sources():
    [job] = fu.unlearning_children(TARGET, FT_OWNER, FT_SPEC, spec_with(configMap={"name": "gdpr", "key": "2026.txt"}))
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"][-1]["configMap"] == {"name": "gdpr", "items": [{"key": "2026.txt", "path": "users.txt"}]}
    [job] = fu.unlearning_children(TARGET, FT_OWNER, FT_SPEC, spec_with(path="forget/1.txt"))
    pod = job["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert command[command.index("--users-file") + 1] == f"{STATE_DIR}/forget/1.txt"
    assert not any(v["name"] == "forget" for v in pod["volumes"])


def one_process(training_pod: dict) -> dict:
    """A training pod as an apply Job runs it: the same pod, one process where training starts a rank per GPU (hospital-b's
    2 GPUs); applying an unlearning trains nothing."""
    pod = copy.deepcopy(training_pod)
    command = pod["containers"][0]["command"]
    if command[:3] == ["python", "-m", "torch.distributed.run"]:
        pod["containers"][0]["command"] = ["fedshield", *command[command.index("fedshield.cli") + 1:]]
    return pod


def test_apply_jobs_run_the_silo_agent_unchanged_at_every_other_silo():
    jobs = fu.apply_jobs(TARGET, FT_OWNER, FT_SPEC, spec_with())
    assert [j["metadata"]["namespace"] for j in jobs] == ["org-hospital-b", "org-clinic-c"]
    for job, silo in zip(jobs, FT_SPEC.silos[1:], strict=False):
        assert job["spec"]["template"]["spec"] == one_process(silo_job(FT_OWNER, FT_SPEC, silo)["spec"]["template"]["spec"])
        assert job["metadata"]["name"] == fu.apply_job_name(TARGET, silo.name)
    assert FT_SPEC.silos[1].ranks == 2  # the case above is exercised


def test_names_fit_and_children_in_the_cr_namespace_are_owned():
    long = fu.Target("x" * 250, "org-hospital-a", "uid")
    for name in (fu.job_name(long), fu.apply_job_name(long, "y" * 63), fu.forget_configmap_name(long)):
        assert len(name) <= 63 and not name.startswith("-")
    [configmap, job] = fu.unlearning_children(long, FT_OWNER, FT_SPEC, spec_with())
    assert job["metadata"]["ownerReferences"][0] == long.reference() and long.reference()["kind"] == "FederatedUnlearning"


def test_references_are_checked_naming_the_field():
    spec = spec_with()
    with pytest.raises(fu.Refused, match=r'^spec\.finetune: FederatedFinetune "triage-notes" not found in namespace "fedshield"$'):
        fu.check_reference(spec, None, NS)
    other = spec.model_copy(update={"silo": "clinic-z"})
    with pytest.raises(fu.Refused, match=r'^spec\.silo: silo "clinic-z" is not in FederatedFinetune "triage-notes"'):
        fu.check_reference(other, {"spec": FINETUNE["spec"]}, NS)
    assert fu.check_reference(spec, {"spec": FINETUNE["spec"]}, NS) == FT_SPEC


# --- status (pure) ----------------------------------------------------------------------------

def _job(**status):
    return {"status": status}


def test_status_waits_runs_reads_the_record_applies_and_succeeds():
    spec = spec_with()
    waiting = fu.compute_status(spec, FT_SPEC, TARGET, fu.Observed(finetune_phase="Running"), None, "t0", 1)
    assert waiting["phase"] == "Pending" and "jobName" not in waiting
    assert waiting["conditions"][0]["reason"] == "WaitingForFinetune" and "phase Running" in waiting["message"]
    running = fu.compute_status(spec, FT_SPEC, TARGET, fu.Observed("Succeeded", True, _job(active=1)), waiting, "t1", 1)
    assert (running["phase"], running["jobName"], running["jobNamespace"], running["startTime"]) == ("Running", UNLEARN_JOB, "org-hospital-a", "t1")
    done = _job(succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    no_record = fu.compute_status(spec, FT_SPEC, TARGET, fu.Observed("Succeeded", True, done), running, "t2", 1)
    assert no_record["phase"] == "Running" and "waiting for its record" in no_record["message"]
    rec = fu.pick_record([record(0, "hospital-a", 20), record(1, "clinic-c", 21), record(2, "hospital-a", 22)], "hospital-a")
    applying = fu.compute_status(spec, FT_SPEC, TARGET, fu.Observed("Succeeded", True, done, record=rec,
                                                                    apply_jobs={"hospital-b": _job(active=1), "clinic-c": None}), no_record, "t3", 1)
    assert applying["phase"] == "Running" and applying["appliedSilos"] == "1/3"
    assert (applying["unlearningVersion"], applying["adapterVersionBefore"], applying["adapterVersionAfter"]) == (2, 22, 23)
    assert (applying["forgetAucBefore"], applying["forgetAucAfter"], applying["testAucBefore"], applying["testAucAfter"]) == (0.91, 0.52, 0.74, 0.73)
    assert applying["usersCount"] == 2 and applying["durationSeconds"] == 12.5 and applying["usersSha256"] == "ab" * 32
    assert [(a["silo"], a["phase"]) for a in applying["applyJobs"]] == [("hospital-b", "Running"), ("clinic-c", "Pending")]
    succeeded = fu.compute_status(spec, FT_SPEC, TARGET, fu.Observed("Succeeded", True, done, apply_jobs={
        "hospital-b": done, "clinic-c": done}), applying, "t4", 1)
    assert succeeded["phase"] == "Succeeded" and succeeded["appliedSilos"] == "3/3" and succeeded["completionTime"] == "t4"
    assert succeeded["adapterVersionAfter"] == 23 and succeeded["startTime"] == "t1"  # kept from earlier ticks
    conditions = {c["type"]: c for c in succeeded["conditions"]}
    assert conditions["Applied"]["status"] == "True" and conditions["Forgotten"]["lastTransitionTime"] == "t3"
    assert all(c["observedGeneration"] == 1 for c in conditions.values())


def test_an_upload_waiting_for_approval_shows_its_sha256_and_approvals():
    spec = spec_with()
    assert fu.pick_pending([pending(0, "clinic-c", []), pending(2, "hospital-a", ["clinic-c"], 2)], "hospital-a").version == 2
    assert fu.pick_pending(None, "hospital-a") is None
    running = fu.compute_status(spec, FT_SPEC, TARGET, fu.Observed("Succeeded", True, _job(active=1)), None, "t1", 1)
    waiting = fu.compute_status(spec, FT_SPEC, TARGET, fu.Observed("Succeeded", True, _job(active=1),
                                                                   pending=pending(2, "hospital-a", ["clinic-c"], 2)), running, "t2", 1)
    assert waiting["phase"] == "WaitingForApproval" and waiting["conditions"][0]["reason"] == "WaitingForApproval"
    assert (waiting["uploadSha256"], waiting["approvals"], waiting["approvalsNeeded"], waiting["unlearningVersion"]) == ("cd" * 32, 1, 2, 2)
    assert "fedshield approve" in waiting["message"] and "--sha256 " + "cd" * 32 in waiting["message"]
    assert waiting["conditions"][0]["status"] == "True" and "completionTime" not in waiting  # still progressing
    done = _job(succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    published = fu.compute_status(spec, FT_SPEC, TARGET, fu.Observed("Succeeded", True, done, record=record(2, "hospital-a", 22),
                                                                     apply_jobs={"hospital-b": None, "clinic-c": None}), waiting, "t3", 1)
    assert published["phase"] == "Running" and published["adapterVersionAfter"] == 23 and published["approvals"] == 1


def test_failed_job_and_failed_apply_are_reported():
    spec = spec_with()
    pod = {"status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}}
    failed = fu.compute_status(spec, FT_SPEC, TARGET, fu.Observed("Succeeded", True, _job(failed=1, conditions=[
        {"type": "Failed", "status": "True"}]), [pod]), None, "t", 1)
    assert failed["phase"] == "Failed" and failed["completionTime"] == "t"
    assert f"{UNLEARN_JOB} failed (Error, exit code 1)" in failed["message"]
    gone = fu.compute_status(spec, FT_SPEC, TARGET, fu.Observed("Succeeded", True, None), None, "t", 1)
    assert gone["phase"] == "Failed" and "disappeared" in gone["message"]
    done = _job(succeeded=1)
    apply_failed = fu.compute_status(spec, FT_SPEC, TARGET, fu.Observed("Succeeded", True, done, record=record(0, "hospital-a", 20),
                                                                        apply_jobs={"hospital-b": done, "clinic-c": _job(
                                                                            conditions=[{"type": "Failed", "status": "True"}])}), None, "t", 1)
    assert apply_failed["phase"] == "Failed" and apply_failed["appliedSilos"] == "2/3"
    assert "clinic-c failed to apply it" in apply_failed["message"] and apply_failed["adapterVersionAfter"] == 21


def test_pick_record_takes_the_newest_of_the_silo():
    assert fu.pick_record(None, "hospital-a") is None and fu.pick_record([record(0, "clinic-c", 5)], "hospital-a") is None
    assert fu.pick_record([record(3, "hospital-a", 9), record(1, "hospital-a", 7)], "hospital-a").version == 3


# --- the real kopf operator against the emulator ------------------------------------------------

class FakeAggregator:
    """The aggregator's /v1/status and /v1/unlearning, as the test moves them along."""

    def __init__(self):
        self.status: dict | None = None
        self.records: list[UnlearningRecord] | None = None
        self.pending: list[PendingUnlearning] | None = None
        self.ledger_reads = 0
        self.ledger_at: str | None = None  # a real aggregator's URL: read its ledger there (in-cluster DNS is not here)

    async def plan_status(self, url: str) -> Status | None:
        return status_of(copy.deepcopy(self.status))

    async def unlearnings(self, url: str) -> list[UnlearningRecord] | None:
        assert url == aggregator_url(Owner(FT_NAME, NS, ""), tls=True)
        self.ledger_reads += 1
        if self.ledger_at is not None:
            return await fu.fetch_unlearning_records(self.ledger_at)  # the operator's own client, certificate and all
        return copy.deepcopy(self.records)

    async def waiting(self, url: str) -> list[PendingUnlearning] | None:
        assert url == aggregator_url(Owner(FT_NAME, NS, ""), tls=True)
        if self.ledger_at is not None:
            return await fu.fetch_pending_unlearnings(self.ledger_at)
        return copy.deepcopy(self.pending)


@pytest.fixture
async def operator(k8s):
    """The operator with a fake aggregator that also serves the unlearning ledger (overrides conftest's)."""
    aggregator = FakeAggregator()
    async with running_operator(k8s, aggregator_status=aggregator.plan_status, unlearning_records=aggregator.unlearnings,
                                unlearning_pending=aggregator.waiting):
        yield aggregator


def fu_status(k8s) -> dict:
    return raw(k8s, (UNLEARNING_CR, NS, NAME)).get("status", {})


def unlearning_jobs(k8s) -> list[tuple[str, str]]:
    return sorted((ns, name) for (res, ns, name) in list(k8s.objects) if res == JOBS and name.startswith(NAME) and alive(k8s, (res, ns, name)))


async def create(k8s, kind: str, body: dict) -> None:
    """Create the CR with the uid the pure tests use (the emulator keeps it), after the organisations' consent."""
    plural = {"FederatedFinetune": "federatedfinetunes", "FederatedUnlearning": "federatedunlearnings"}[kind]
    body = dict(body, metadata=dict(body["metadata"], uid=(FT_OWNER if kind == "FederatedFinetune" else TARGET).uid))
    if kind == "FederatedFinetune":
        await consent(k8s)
    response = await k8s.post(f"/apis/fedshield.io/v1alpha1/namespaces/{NS}/{plural}", json=body)
    assert response.status == 200, await response.text()


async def set_job_status(k8s, namespace: str, name: str, **job_status) -> None:
    response = await k8s.patch(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}/status", json={"status": job_status}, headers=MERGE)
    assert response.status == 200, await response.text()


COMPLETE = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}


@pytest.mark.parametrize("finetune, change, field", [
    (False, {}, 'spec.finetune: FederatedFinetune "triage-notes" not found in namespace "fedshield"'),
    (True, {"silo": "clinic-z"}, 'spec.silo: silo "clinic-z" is not in FederatedFinetune "triage-notes"'),
    (True, {"forget": {"users": []}}, "spec.forget.users: List should have at least 1 item"),
], ids=["unknown-finetune", "unknown-silo", "empty-users"])
async def test_refused_naming_the_field_and_no_job(k8s, operator, finetune, change, field):
    if finetune:
        await create(k8s, "FederatedFinetune", FINETUNE)
    await create(k8s, "FederatedUnlearning", dict(EXAMPLE, spec=dict(EXAMPLE["spec"], **change)))
    await eventually(lambda: fu_status(k8s).get("phase") == "Failed", what="refused")
    status = fu_status(k8s)
    assert field in status["message"] and field in status["conditions"][0]["message"]
    assert status["conditions"][0]["reason"] in ("InvalidSpec", "InvalidReference")
    await asyncio.sleep(1)  # a few timer ticks: still nothing created
    assert unlearning_jobs(k8s) == [] and not any(alive(k8s, (CONFIGMAPS, ns, FORGET_CM)) for ns in SILO_NS.values())
    assert fu_status(k8s)["phase"] == "Failed"


async def test_waits_for_the_finetune_then_forgets_at_one_silo_and_applies_everywhere(k8s, operator):
    aggregator = operator
    await create(k8s, "FederatedFinetune", FINETUNE)
    await create(k8s, "FederatedUnlearning", EXAMPLE)
    await eventually(lambda: all(alive(k8s, (JOBS, ns, silo_job_name(FT_OWNER, s))) for s, ns in SILO_NS.items()), what="training Jobs")
    await eventually(lambda: fu_status(k8s).get("phase") == "Pending", what="waiting")
    assert fu_status(k8s)["conditions"][0]["reason"] == "WaitingForFinetune"
    patches = len(k8s["patch", UNLEARNING_CR])
    await asyncio.sleep(1)  # several timer ticks: nothing created, nothing rewritten
    assert unlearning_jobs(k8s) == [] and aggregator.ledger_reads == 0 and len(k8s["patch", UNLEARNING_CR]) == patches
    # The federation finishes: every training Job completes and the aggregator's plan is finished.
    aggregator.status = {"plan": {"state": "finished"}, "closed": []}
    for silo, ns in SILO_NS.items():
        await set_job_status(k8s, ns, silo_job_name(FT_OWNER, silo), **COMPLETE)
    await eventually(lambda: raw(k8s, (CR, NS, FT_NAME)).get("status", {}).get("phase") == "Succeeded", what="finetune Succeeded")
    await eventually(lambda: unlearning_jobs(k8s) == [("org-hospital-a", UNLEARN_JOB)], what="one unlearning Job")
    job = raw(k8s, (JOBS, "org-hospital-a", UNLEARN_JOB))
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["fedshield", "unlearn"] and "--users-file" in command
    assert raw(k8s, (CONFIGMAPS, "org-hospital-a", FORGET_CM))["data"]["users.txt"] == "patient-0193\npatient-2231\n"
    await eventually(lambda: fu_status(k8s).get("phase") == "Running" and fu_status(k8s).get("jobName") == UNLEARN_JOB, what="Running")
    # The Job uploaded; its upload waits for another silo's approval (the Job waits with it).
    aggregator.pending = [pending(1, "hospital-a", [])]
    await set_job_status(k8s, "org-hospital-a", UNLEARN_JOB, active=1)
    await eventually(lambda: fu_status(k8s).get("phase") == "WaitingForApproval", what="WaitingForApproval")
    assert (fu_status(k8s)["uploadSha256"], fu_status(k8s)["approvals"]) == ("cd" * 32, 0)
    assert unlearning_jobs(k8s) == [("org-hospital-a", UNLEARN_JOB)]  # nothing applied before approval
    aggregator.pending = [pending(1, "hospital-a", ["clinic-c"], 2)]
    await eventually(lambda: fu_status(k8s).get("approvals") == 1, what="the approval count")
    aggregator.pending = []
    # The Job completes and the aggregator's ledger shows its record (after an older one of another silo).
    aggregator.records = [record(0, "clinic-c", 20), record(1, "hospital-a", 21)]
    await set_job_status(k8s, "org-hospital-a", UNLEARN_JOB, **COMPLETE)
    applies = [("org-clinic-c", fu.apply_job_name(TARGET, "clinic-c")), ("org-hospital-a", UNLEARN_JOB), ("org-hospital-b", fu.apply_job_name(TARGET, "hospital-b"))]
    await eventually(lambda: unlearning_jobs(k8s) == applies, what="apply Jobs at the other silos")
    await eventually(lambda: fu_status(k8s).get("adapterVersionAfter") == 22, what="metrics from the audit record")
    status = fu_status(k8s)
    assert (status["forgetAucBefore"], status["forgetAucAfter"], status["testAucBefore"], status["testAucAfter"]) == (0.91, 0.52, 0.74, 0.73)
    assert (status["usersCount"], status["durationSeconds"], status["adapterVersionBefore"], status["unlearningVersion"]) == (2, 12.5, 21, 1)
    assert status["phase"] == "Running" and status["appliedSilos"] == "1/3"
    apply_pod = raw(k8s, (JOBS, "org-hospital-b", fu.apply_job_name(TARGET, "hospital-b")))["spec"]["template"]["spec"]
    assert apply_pod == one_process(raw(k8s, (JOBS, "org-hospital-b", silo_job_name(FT_OWNER, "hospital-b")))["spec"]["template"]["spec"])  # the training pod
    for ns, name in applies:
        if name != UNLEARN_JOB:
            await set_job_status(k8s, ns, name, **COMPLETE)
    await eventually(lambda: fu_status(k8s).get("phase") == "Succeeded", what="Succeeded")
    assert fu_status(k8s)["appliedSilos"] == "3/3" and fu_status(k8s)["completionTime"]
    # The finetune's own status did not mistake these Jobs for its silos'.
    assert raw(k8s, (CR, NS, FT_NAME))["status"]["phase"] == "Succeeded"
    assert not [r for r in k8s if "/secrets" in str(r.url)], "the operator must never touch a Secret"
    # Deleting the unlearning deletes its children in the silo namespaces (finalizer).
    assert "fedshield.io/cleanup" in raw(k8s, (UNLEARNING_CR, NS, NAME))["metadata"]["finalizers"]
    response = await k8s.delete(f"/apis/fedshield.io/v1alpha1/namespaces/{NS}/federatedunlearnings/{NAME}")
    assert response.status == 200
    await eventually(lambda: k8s.objects[UNLEARNING_CR, NS, NAME].deleted, what="deleted after the finalizer")
    assert unlearning_jobs(k8s) == [] and k8s.objects[CONFIGMAPS, "org-hospital-a", FORGET_CM].deleted


@pytest.mark.parametrize("path", ["forget/1.txt", "a..b/c", "a/b..", "..", "../a", "a/../b", "a/.."])
def test_path_rule_of_the_crd_and_pydantic_agree(path):
    [rule] = [r["rule"] for r in fu_api.FORGET_RULES if "matches(" in r["rule"]]
    pattern = re.search(r"matches\('(.*)'\)", rule).group(1)  # an RE2 pattern Python's re reads alike
    cel_refuses = re.search(pattern, path) is not None
    try:
        spec_with(path=path)
        pydantic_refuses = False
    except ValidationError:
        pydantic_refuses = True
    assert cel_refuses == pydantic_refuses == (".." in path.split("/"))


async def test_no_unlearning_job_where_the_silo_namespace_withdrew_its_consent(k8s, operator):
    aggregator = operator
    await create(k8s, "FederatedFinetune", FINETUNE)
    await eventually(lambda: all(alive(k8s, (JOBS, ns, silo_job_name(FT_OWNER, s))) for s, ns in SILO_NS.items()), what="training Jobs")
    aggregator.status = {"plan": {"state": "finished"}, "closed": []}
    for silo, ns in SILO_NS.items():
        await set_job_status(k8s, ns, silo_job_name(FT_OWNER, silo), **COMPLETE)
    await eventually(lambda: raw(k8s, (CR, NS, FT_NAME)).get("status", {}).get("phase") == "Succeeded", what="finetune Succeeded")
    # hospital-a's admin withdraws: deletes the membership
    response = await k8s.delete("/apis/fedshield.io/v1alpha1/namespaces/org-hospital-a/federationmemberships/fedshield")
    assert response.status == 200
    writes_before = writes_in(k8s, "org-hospital-a")
    await create(k8s, "FederatedUnlearning", EXAMPLE)
    await eventually(lambda: fu_status(k8s).get("phase") == "Failed", what="refused")
    assert fu_status(k8s)["conditions"][0]["reason"] == "ConsentMissing"
    assert 'namespace "org-hospital-a" has no FederationMembership admitting FederatedFinetune fedshield/triage-notes' in fu_status(k8s)["message"]
    await asyncio.sleep(0.5)
    assert writes_in(k8s, "org-hospital-a") == writes_before and unlearning_jobs(k8s) == []


async def test_an_unlearning_completes_under_mutual_tls_reading_the_real_ledger_as_observer(k8s, operator, tmp_path, public_keys, monkeypatch):
    """A real aggregator with mutual TLS, silos pinned to the federation and the operator as its observer: without the
    operator's certificate the ledger answers 401 and the unlearning waits; with it, the unlearning completes."""
    aggregator = operator
    certs = tmp_path / "certs"
    issue_all(certs, [])
    observer = issue_observer(certs, observer_uri("fedshield", "fs-operator"))
    tls = ServerTLS(certs / "aggregator.crt", certs / "aggregator.key", certs / "ca.crt")
    auth = Authenticator(mutual_tls=True, federation=f"{NS}/{FT_NAME}", observers=frozenset({observer_uri("fedshield", "fs-operator")}))
    config = FederationConfig(silos=tuple(ConfigSilo(name=s) for s in SILO_NS), rounds=1)
    with RunningAggregator(config, public_keys, tmp_path / "state", tls=tls, auth=auth) as real:
        audit = record(0, "hospital-a", 20).audit.model_dump(mode="json")
        real.coordinator.store.add_unlearning(0, "hospital-a", "cd" * 32, 1000, 20, audit)  # as accept_unlearning records it
        monkeypatch.setenv(CA_ENV, str(certs / "ca.crt"))
        aggregator.ledger_at = real.url
        await create(k8s, "FederatedFinetune", FINETUNE)
        await eventually(lambda: all(alive(k8s, (JOBS, ns, silo_job_name(FT_OWNER, s))) for s, ns in SILO_NS.items()), what="training Jobs")
        aggregator.status = {"plan": {"state": "finished"}, "closed": []}
        for silo, ns in SILO_NS.items():
            await set_job_status(k8s, ns, silo_job_name(FT_OWNER, silo), **COMPLETE)
        await create(k8s, "FederatedUnlearning", EXAMPLE)
        await eventually(lambda: unlearning_jobs(k8s) == [("org-hospital-a", UNLEARN_JOB)], what="one unlearning Job")
        await set_job_status(k8s, "org-hospital-a", UNLEARN_JOB, **COMPLETE)
        reads = aggregator.ledger_reads
        await eventually(lambda: aggregator.ledger_reads >= reads + 2, what="ledger reads")
        assert fu_status(k8s)["phase"] == "Running" and "waiting for its record" in fu_status(k8s)["message"]  # 401 without identity
        monkeypatch.setenv(CERT_ENV, str(observer.cert))
        monkeypatch.setenv(KEY_ENV, str(observer.key))
        await eventually(lambda: fu_status(k8s).get("adapterVersionAfter") == 21, what="the record, read as observer")
        for silo in ("hospital-b", "clinic-c"):
            await set_job_status(k8s, SILO_NS[silo], fu.apply_job_name(TARGET, silo), **COMPLETE)
        await eventually(lambda: fu_status(k8s).get("phase") == "Succeeded", what="Succeeded under mutual TLS")
