"""Multi-node silos (issue #20 items 1-2): the spec's nodes/gpusPerNode, the JobSet builder, its status, the silo Role.

The JobSet is checked field by field against a JSON Schema transcribed by hand from the JobSet v1alpha2 Go types,
``api/jobset/v1alpha2/jobset_types.go`` of kubernetes-sigs/jobset at commit 816ba51e81dfd904329ac3dc5a540816764e8fa4
(JobSetSpec, ReplicatedJob, Network, FailurePolicy, FailurePolicyRule, SuccessPolicy, StartupPolicy, Coordinator,
DependsOn, JobSetStatus, ReplicatedJobStatus): every key it emits must be a field of those types, of their type and
enum; unknown keys fail (``additionalProperties: false``). The embedded Job template (batch/v1 JobTemplateSpec) and so its
pod template are validated strictly as a core Job with kubernetes-validate.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError
from support.charts import SILO, render
from support.crd_schema import cel_refusals, crd_validator

from fedshield.api.models import FederatedFinetuneSpec
from fedshield.config import MULTI_NODE_DP_SGD_MESSAGE
from fedshield.operator import jobset as js
from fedshield.operator.handlers import multi_node_refusal
from fedshield.operator.kube import PLURALS, mutable_part
from fedshield.operator.manifests import Owner, Site, desired_children, silo_job
from fedshield.operator.status import Observed, compute_status, pod_ready

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "examples" / "federatedfinetune.yaml").read_text())
OWNER = Owner("triage-notes", "fedshield", "0b9c7a34-1111-2222-3333-444455556666")
K8S_VERSION = "1.34"
JOBSET_COMMIT = "816ba51e81dfd904329ac3dc5a540816764e8fa4"

INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
STRINGS = {"type": "array", "items": {"type": "string"}}
OBJECT = {"type": "object"}  # metav1.ObjectMeta / metav1.Condition / batchv1.JobSpec: checked by kubernetes-validate


def _struct(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


# Transcribed from jobset_types.go (v1alpha2) at JOBSET_COMMIT; json tags as field names.
FAILURE_POLICY_RULE = _struct({
    "name": {"type": "string", "pattern": r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"},
    "action": {"enum": ["FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts"]},
    "onJobFailureReasons": STRINGS, "onJobFailureMessagePatterns": STRINGS, "targetReplicatedJobs": STRINGS,
}, ("name", "action"))
REPLICATED_JOB = _struct({
    "name": {"type": "string"},
    "groupName": {"type": "string"},
    "template": _struct({"metadata": OBJECT, "spec": OBJECT}),  # batchv1.JobTemplateSpec
    "replicas": INT32,
    "dependsOn": {"type": "array", "maxItems": 5, "items": _struct({"name": {"type": "string"}, "status": {"enum": ["Ready", "Complete"]}},
                                                                  ("name", "status"))},
}, ("name", "template"))
JOBSET_SPEC = _struct({
    "replicatedJobs": {"type": "array", "items": REPLICATED_JOB},
    "network": _struct({"enableDNSHostnames": {"type": "boolean"}, "subdomain": {"type": "string"},
                        "publishNotReadyAddresses": {"type": "boolean"}}),
    "successPolicy": _struct({"operator": {"enum": ["All", "Any"]}, "targetReplicatedJobs": STRINGS}, ("operator",)),
    "failurePolicy": _struct({"maxRestarts": INT32, "restartStrategy": {"enum": ["Recreate", "BlockingRecreate"]},
                              "rules": {"type": "array", "items": FAILURE_POLICY_RULE}}),
    "startupPolicy": _struct({"startupPolicyOrder": {"enum": ["AnyOrder", "InOrder"]}}, ("startupPolicyOrder",)),
    "suspend": {"type": "boolean"},
    "coordinator": _struct({"replicatedJob": {"type": "string"}, "jobIndex": {"type": "integer"}, "podIndex": {"type": "integer"}},
                           ("replicatedJob",)),
    "managedBy": {"type": "string", "maxLength": 63},
    "ttlSecondsAfterFinished": dict(INT32, minimum=0),
})
JOBSET_STATUS = _struct({
    "conditions": {"type": "array", "items": OBJECT},
    "restarts": INT32, "restartsCountTowardsMax": INT32, "terminalState": {"type": "string"},
    "replicatedJobsStatus": {"type": "array", "items": _struct({k: INT32 for k in ("ready", "succeeded", "failed", "active", "suspended")}
                                                                | {"name": {"type": "string"}},
                                                                ("name", "ready", "succeeded", "failed", "active", "suspended"))},
})
JOBSET = _struct({"apiVersion": {"const": "jobset.x-k8s.io/v1alpha2"}, "kind": {"const": "JobSet"}, "metadata": OBJECT,
                  "spec": JOBSET_SPEC, "status": JOBSET_STATUS}, ("apiVersion", "kind", "metadata"))
VALIDATOR = jsonschema.Draft202012Validator(JOBSET)
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def raw_spec(nodes: int | None = 2, **silo0) -> dict:
    raw = copy.deepcopy(EXAMPLE["spec"])
    raw["silos"][0].update(silo0 if nodes is None else dict(silo0, nodes=nodes))
    if nodes and nodes > 1:
        raw["training"] = dict(raw["training"], batchSize=192)  # divides over 2, 3, 4 and 64 nodes
    return raw


def spec_of(nodes: int = 2, **silo0) -> FederatedFinetuneSpec:
    return FederatedFinetuneSpec.model_validate(raw_spec(nodes, **silo0))


def jobset_of(spec: FederatedFinetuneSpec) -> dict:
    return js.silo_jobset(OWNER, spec, spec.silos[0])


def as_job(jobset: dict) -> dict:
    """The Job JobSet makes of the replicated job (named <jobset>-<replicatedJob>-<index>)."""
    rjob = jobset["spec"]["replicatedJobs"][0]
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": f"{jobset['metadata']['name']}-{rjob['name']}-0", "namespace": jobset["metadata"]["namespace"]},
            "spec": rjob["template"]["spec"]}


def env_of(jobset: dict) -> dict:
    container = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("nodes, gpus", [(2, 1), (4, 8), (64, 0)])
def test_jobset_fields_are_jobset_v1alpha2_fields_and_its_job_is_a_strict_core_job(nodes, gpus):
    jobset = jobset_of(spec_of(nodes, gpusPerNode=gpus, gpus=gpus))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(jobset)]
    assert not errors, errors
    kubernetes_validate.validate(as_job(jobset), K8S_VERSION, strict=True)
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "rank", "namespace": "ns"},
                                  "spec": jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]},
                                 K8S_VERSION, strict=True)
    assert JOBSET_COMMIT in __doc__


def test_one_indexed_replicated_job_dns_hostnames_and_a_whole_group_restart_policy():
    jobset = jobset_of(spec_of(2))
    spec = jobset["spec"]
    assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and jobset["metadata"]["namespace"] == "org-hospital-a"
    assert [r["name"] for r in spec["replicatedJobs"]] == ["rank"] and spec["replicatedJobs"][0]["replicas"] == 1
    job = spec["replicatedJobs"][0]["template"]["spec"]
    assert (job["completions"], job["parallelism"], job["completionMode"], job["backoffLimit"]) == (2, 2, "Indexed", 0)
    assert spec["network"] == {"enableDNSHostnames": True}  # JobSet then creates the headless Service named as the JobSet
    assert spec["failurePolicy"] == {"maxRestarts": js.MAX_RESTARTS} and spec["suspend"] is False
    pod = job["template"]
    assert pod["metadata"]["labels"]["fedshield.io/silo"] == "hospital-a"  # the aggregator's NetworkPolicy admits these pods
    assert pod["spec"]["restartPolicy"] == "Never"
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert ports == {"metrics": 9090, "rendezvous": js.RENDEZVOUS_PORT}


def test_rendezvous_environment():
    jobset = jobset_of(spec_of(4, gpusPerNode=8, gpus=8))
    name = jobset["metadata"]["name"]
    env = env_of(jobset)
    assert env["MASTER_ADDR"] == f"{name}-rank-0-0.{name}"  # <jobSet>-<replicatedJob>-<jobIndex>-<podIndex>.<subdomain>
    assert (env["MASTER_PORT"], env["NNODES"], env["NPROC_PER_NODE"], env["WORLD_SIZE"]) == ("29500", "4", "8", "32")
    assert env["NODE_RANK"] == {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    limits = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "8"
    cpu = env_of(jobset_of(spec_of(3, gpus=0)))
    assert (cpu["NPROC_PER_NODE"], cpu["WORLD_SIZE"]) == ("1", "3")  # CPU-only: one process per node


@pytest.mark.parametrize("cr_name", ["triage-notes", "9-lives", "a.b.c", "x" * 63])
def test_jobset_names_make_dns_labels_for_every_pod_hostname(cr_name):
    owner = Owner(cr_name, "fedshield", "uid-1")
    name = js.jobset_name(owner, "a-silo-with-a-long-name-" + "z" * 30)
    assert DNS_1035.match(name) and len(name) <= js.NAME_LIMIT
    assert len(f"{name}-rank-0-63") <= 63 and js.jobset_name(owner, "b") != js.jobset_name(Owner(cr_name, "fedshield", "uid-2"), "b")


def test_one_node_stays_the_job_byte_for_byte():
    default, explicit = (FederatedFinetuneSpec.model_validate(raw_spec(n)) for n in (1, None))
    assert desired_children(OWNER, default) == desired_children(OWNER, explicit)
    plain = FederatedFinetuneSpec.model_validate(EXAMPLE["spec"])
    assert desired_children(OWNER, plain) == desired_children(OWNER, default)
    assert js.silo_workload(OWNER, plain, plain.silos[0]) == silo_job(OWNER, plain, plain.silos[0])
    assert all(c["kind"] != "JobSet" for c in desired_children(OWNER, plain))


def test_a_two_node_silo_gets_a_jobset_and_a_shared_state_volume():
    children = desired_children(OWNER, spec_of(2))
    kinds = [(c["kind"], c["metadata"]["namespace"]) for c in children]
    assert ("JobSet", "org-hospital-a") in kinds and ("Job", "org-hospital-a") not in kinds
    assert kinds.count(("Job", "org-hospital-b")) == 1
    claims = {c["metadata"]["namespace"]: c["spec"]["accessModes"] for c in children if c["kind"] == "PersistentVolumeClaim"}
    assert claims["org-hospital-a"] == ["ReadWriteMany"] and claims["org-hospital-b"] == ["ReadWriteOnce"]
    jobset = next(c for c in children if c["kind"] == "JobSet")
    assert PLURALS[(jobset["apiVersion"], jobset["kind"])] == "jobsets"
    assert mutable_part(jobset)["spec"] == {"suspend": False}
    assert jobset_of(spec_of(2, **{}))["spec"]["suspend"] is False
    suspended = FederatedFinetuneSpec.model_validate(dict(raw_spec(2), suspend=True))
    assert jobset_of(suspended)["spec"]["suspend"] is True


INVALID = [
    ({"nodes": 0}, "nodes", True),
    ({"nodes": 65}, "nodes", True),
    ({"nodes": "two"}, "nodes", True),
    ({"gpusPerNode": 17}, "gpusPerNode", True),
    ({"gpus": 2, "gpusPerNode": 4}, "gpus and gpusPerNode disagree", False),  # CEL rule
]


@pytest.mark.parametrize("silo0, message, structural", INVALID, ids=[str(s) for s, _, _ in INVALID])
def test_invalid_placements_are_refused_by_the_models_and_the_crd(silo0, message, structural):
    raw = copy.deepcopy(EXAMPLE["spec"])
    raw["silos"][0].update(silo0)
    with pytest.raises(ValidationError, match=message):
        FederatedFinetuneSpec.model_validate(raw)
    if structural:
        assert list(crd_validator().iter_errors(dict(EXAMPLE, spec=raw)))


def test_dp_sgd_needs_single_node_silos_and_zero_stage_is_free():
    raw = raw_spec(2)
    raw["training"] = dict(raw["training"], zeroStage=0)
    raw["privacy"] = dict(raw["privacy"], dp={"enabled": True, "unit": "record", "noiseMultiplier": 1.0})
    with pytest.raises(ValidationError, match="DP-SGD"):
        FederatedFinetuneSpec.model_validate(raw)
    raw["privacy"]["dp"]["unit"] = "silo"
    assert FederatedFinetuneSpec.model_validate(raw).silos[0].nodes == 2
    for stage in range(4):  # ZeRO 0 is plain data parallel: any stage goes with nodes > 1
        assert FederatedFinetuneSpec.model_validate(dict(raw_spec(2), training=dict(EXAMPLE["spec"]["training"], zeroStage=stage)))
    assert list(crd_validator().iter_errors(dict(EXAMPLE, spec=raw_spec(2)))) == []


def test_multi_node_is_refused_with_a_reason_unless_the_operator_runs_jobsets():
    spec = spec_of(2)
    reason, message = multi_node_refusal(spec, Site(multi_node="off")) or ("", "")
    assert reason == "MultiNodeDisabled" and "hospital-a (2 nodes)" in message and "multiNode: off" in message and "multi-rank" in message
    assert "multiNode: auto (the default) or jobset" in message and "kubectl apply --server-side -f" in message
    reason, message = multi_node_refusal(spec, Site()) or ("", "")  # auto, the default, and JobSets not served
    assert reason == "JobSetMissing" and "hospital-a (2 nodes)" in message and "multiNode: auto" in message
    assert "jobset.x-k8s.io/v1alpha2 jobsets" in message and "kubernetes-sigs/jobset/releases" in message and "docs/deploy.md" in message
    assert multi_node_refusal(spec, Site(), jobset_api=True) is None  # auto, and JobSets served
    assert multi_node_refusal(spec, Site(multi_node="jobset")) is None  # forced: no discovery asked
    assert multi_node_refusal(spec, Site(multi_node="off"), jobset_api=True)  # off stays off
    for site in (Site(), Site(multi_node="off")):
        assert multi_node_refusal(FederatedFinetuneSpec.model_validate(EXAMPLE["spec"]), site) is None


def _jobset_status(**status) -> dict:
    body = {"apiVersion": js.API_VERSION, "kind": js.KIND, "metadata": {"name": "x"}, "status": status}
    assert not list(VALIDATOR.iter_errors(body)), "a status JobSet v1alpha2 would not write"
    return body


def test_status_reports_ranks_ready_restarts_and_the_failing_rank():
    spec = spec_of(2)
    rjob = {"name": "rank", "ready": 0, "succeeded": 0, "failed": 0, "active": 1, "suspended": 0}
    running = _jobset_status(restarts=1, replicatedJobsStatus=[rjob])
    failed_pod = {"metadata": {"labels": {}}, "status": {"phase": "Failed", "containerStatuses": [
        {"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}}
    observed = Observed(jobsets={"hospital-a": running}, ready_pods={"hospital-a": 1}, failed_pods={"hospital-a": [failed_pod]})
    silo = compute_status(spec, observed, None, "2026-01-01T00:00:00Z", 1)["silos"][0]
    assert silo == {"name": "hospital-a", "phase": "Running", "exitCode": 137, "reason": "OOMKilled", "restarts": 1, "ranksReady": "1/2"}
    done = _jobset_status(restarts=1, terminalState="Completed", conditions=[{"type": "Completed", "status": "True"}],
                          replicatedJobsStatus=[dict(rjob, active=0, succeeded=1)])
    assert compute_status(spec, Observed(jobsets={"hospital-a": done}), None, "t", 1)["silos"][0]["phase"] == "Succeeded"
    gone = _jobset_status(restarts=4, terminalState="Failed", conditions=[{"type": "Failed", "status": "True"}])
    assert compute_status(spec, Observed(jobsets={"hospital-a": gone}), None, "t", 1)["silos"][0]["phase"] == "Failed"
    single = compute_status(spec, Observed(), None, "t", 1)["silos"][1]
    assert "ranksReady" not in single  # one-node silos: as before


def test_a_rank_pod_being_deleted_is_not_counted_ready():
    """During a group restart the old ranks stay Running and Ready until their containers stop: not counted."""
    ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    assert pod_ready({"metadata": {}, "status": ready})
    assert not pod_ready({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": ready})
    assert not pod_ready({"metadata": {}, "status": dict(ready, conditions=[{"type": "Ready", "status": "False"}])})


def test_the_silo_role_grants_exactly_the_verbs_the_operator_uses_on_jobsets():
    consent = ["--set", "membership.federations[0].namespace=fedshield", "--set", "membership.federations[0].name=triage-notes",
               "--set", "operator.serviceAccount=fs-operator"]
    docs = render(SILO, *consent, namespace="org-hospital-a", release="hospital-a")
    role = next(d for d in docs if d["kind"] == "Role")
    rules = [r for r in role["rules"] if "jobset.x-k8s.io" in r["apiGroups"]]
    assert rules == [{"apiGroups": ["jobset.x-k8s.io"], "resources": ["jobsets"], "verbs": ["get", "list", "create", "patch", "delete"]}]
    assert not [d for d in render(SILO, namespace="org-hospital-a", release="hospital-a") if d["kind"] == "Role"]  # no consent: none


def _selects(selector: dict, pod_labels: dict) -> bool:
    return all(pod_labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_the_silo_network_policy_admits_rank_to_rank_traffic_only_when_asked():
    args = ("--set", "networkPolicy.ranks.enabled=true")
    policy = next(d for d in render(SILO, *args, namespace="org-hospital-a", release="hospital-a") if d["kind"] == "NetworkPolicy")
    silo = policy["spec"]["podSelector"]["matchLabels"]["fedshield.io/silo"]
    jobset = jobset_of(spec_of(2, name=silo))
    pod_labels = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["metadata"]["labels"]
    peers = [p for rule in policy["spec"]["ingress"] for p in rule["from"] if "podSelector" in p and "namespaceSelector" not in p]
    assert len(peers) == 1 and _selects(peers[0]["podSelector"], pod_labels)
    assert [r for r in policy["spec"]["egress"] if r["to"] == peers and "ports" not in r]  # every port, to the same pods
    kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    default = next(d for d in render(SILO, namespace="org-hospital-a", release="hospital-a") if d["kind"] == "NetworkPolicy")
    assert default["spec"]["ingress"] == [] and all("namespaceSelector" in p or "ipBlock" in p
                                                   for r in default["spec"]["egress"] for p in r["to"])


@pytest.mark.parametrize("placement", [{"gpus": 4}, {"gpusPerNode": 4}])
def test_a_one_node_silo_with_several_gpus_runs_a_rank_per_gpu_in_its_job(placement):
    """One pod, torchrun inside it starting 4 ranks (rendezvous on the pod's loopback), and the pod asks for the 4 GPUs."""
    raw = raw_spec(None, **placement)
    raw["silos"][0].pop("gpus", None) if "gpusPerNode" in placement else None
    raw["training"] = dict(raw["training"], batchSize=16)
    spec = FederatedFinetuneSpec.model_validate(raw)
    job = js.silo_workload(OWNER, spec, spec.silos[0])
    assert job["kind"] == "Job"
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    container = job["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:3] == ["python", "-m", "torch.distributed.run"]
    assert command[command.index("--nproc-per-node") + 1] == "4" and command[command.index("--nnodes") + 1] == "1"
    assert command[command.index("--master-addr") + 1] == "127.0.0.1" and command[command.index("--max-restarts") + 1] == "0"
    assert command[command.index("-m", 3) + 1:][:2] == ["fedshield.cli", "silo"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    single = FederatedFinetuneSpec.model_validate(raw_spec(None, gpus=1))
    assert js.silo_workload(OWNER, single, single.silos[0])["spec"]["template"]["spec"]["containers"][0]["command"][:2] == \
        ["fedshield", "silo"]  # one GPU: the agent itself
    raw["privacy"] = dict(raw["privacy"], dp={"enabled": True, "unit": "record", "noiseMultiplier": 1.0})
    with pytest.raises(ValidationError, match=r"DP-SGD\) needs one-process silos"):  # 4 ranks: no DP-SGD
        FederatedFinetuneSpec.model_validate(raw)
    assert cel_refusals(raw) == [MULTI_NODE_DP_SGD_MESSAGE]  # the CRD's CEL rule agrees


def test_the_membership_gpu_cap_applies_to_each_rank_pod():
    from fedshield.api.membership import FederationMembershipSpec
    from fedshield.operator.consent import silo_problems

    raw = raw_spec(2, gpusPerNode=4)
    del raw["silos"][0]["gpus"]  # gpusPerNode alone: each pod's GPUs
    spec = FederatedFinetuneSpec.model_validate(raw)
    silo = spec.silos[0]
    assert (silo.gpus, silo.pod_gpus) == (1, 4)
    membership = FederationMembershipSpec.model_validate({
        "federations": [{"namespace": "fedshield", "name": "triage-notes"}], "silos": [silo.name], "imagePrefixes": ["fedshield/fedshield:"],
        "secrets": [silo.key_secret, silo.tls.secret_name], "persistentVolumeClaims": [silo.dataset_volume.claim_name, "base-models"],
        "tolerations": [t.model_dump(by_alias=True, exclude_none=True) for t in silo.tolerations], "limits": {"gpus": 2}})
    assert silo_problems(("fedshield", "triage-notes"), spec, silo, membership) == ["4 GPUs (cap 2)"]
    fits = spec_of(2, gpusPerNode=2, gpus=2)
    assert silo_problems(("fedshield", "triage-notes"), fits, fits.silos[0], membership) == []


def test_the_operator_chart_passes_multi_node_to_the_operator_and_refuses_other_values(monkeypatch):
    from support.charts import OPERATOR, run_helm

    def env(*args: str) -> dict:
        deployment = next(d for d in render(OPERATOR, *args, namespace="fedshield", release="fs") if d["kind"] == "Deployment")
        return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert env()["FEDSHIELD_MULTI_NODE"] == "auto"  # the default: JobSets when the API server serves them
    for value in ("jobset", "trainjob", "off", ""):
        assert env("--set", f"multiNode={value}")["FEDSHIELD_MULTI_NODE"] == value
    refused = run_helm("template", "fs", str(OPERATOR), "--namespace", "fedshield", "--set", "multiNode=kueue")
    assert refused.returncode != 0 and "multiNode" in refused.stderr
    for value, mode in (("jobset", "jobset"), ("auto", "auto"), ("off", "off"), ("", "off"), (" Auto ", "auto"), ("TrainJob", "trainjob")):
        monkeypatch.setenv("FEDSHIELD_MULTI_NODE", value)
        assert Site.from_environment().multi_node == mode
    monkeypatch.setenv("FEDSHIELD_MULTI_NODE", "kueue")
    with pytest.raises(ValueError, match="FEDSHIELD_MULTI_NODE must be one of auto, jobset, trainjob, off"):
        Site.from_environment()
    monkeypatch.delenv("FEDSHIELD_MULTI_NODE")
    assert Site.from_environment().multi_node == "auto"


def test_every_rank_pod_runs_torchrun_around_the_silo_agent():
    jobset = jobset_of(spec_of(4, gpusPerNode=8, gpus=8))
    container = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    one_node = silo_job(OWNER, spec_of(1), spec_of(1).silos[0])["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "torch.distributed.run"]
    flags = dict(zip(command[3:-len(one_node) - 1:2], command[4:-len(one_node) - 1:2], strict=True))
    assert flags == {"--nnodes": "$(NNODES)", "--nproc-per-node": "$(NPROC_PER_NODE)", "--node-rank": "$(NODE_RANK)",
                     "--master-addr": "$(MASTER_ADDR)", "--master-port": "$(MASTER_PORT)", "--max-restarts": "0"}
    assert command[-len(one_node) - 1:] == ["-m", "fedshield.cli", *one_node[1:]]  # the one-node silo's arguments
    assert {"NNODES", "NPROC_PER_NODE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"} <= set(env_of(jobset))
