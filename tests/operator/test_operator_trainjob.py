"""Multi-node silos as Kubeflow Trainer TrainJobs (issue #20 item 2, ``multiNode: trainjob``): builder, runtime, status.

The TrainJob is checked field by field against a JSON Schema transcribed by hand from Kubeflow Trainer v2.3.0
(commit 658725bdae5c7e3a0854d93ac6ff492e109a22ab), ``pkg/apis/trainer/v1alpha1/trainjob_types.go`` (TrainJobSpec,
RuntimeRef, Trainer, RuntimePatch, TrainingRuntimeSpecPatch, JobSetTemplatePatch, ReplicatedJobPatch, JobTemplatePatch,
PodTemplatePatch, PodSpecPatch, ContainerPatch, TrainJobStatus, JobStatus) and ``trainingruntime_types.go``
(TrainingRuntimeSpec, MLPolicy): every key it emits must be a field of those types, of their type, length and MaxItems;
unknown keys fail (``additionalProperties: false``). What Trainer would make of it (runtime template + trainer +
patch) is validated strictly as a core Pod with kubernetes-validate, and compared with the JobSet's rank pod.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from support.charts import OPERATOR, SILO, render

from fedshield.api.models import FederatedFinetuneSpec
from fedshield.operator import jobset as js
from fedshield.operator import trainjob as tj
from fedshield.operator.handlers import multi_node_refusal
from fedshield.operator.kube import PLURALS, collection_path, mutable_part
from fedshield.operator.manifests import Owner, Site, desired_children
from fedshield.operator.status import Observed, compute_status

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "examples" / "federatedfinetune.yaml").read_text())
OWNER = Owner("triage-notes", "fedshield", "0b9c7a34-1111-2222-3333-444455556666")
K8S_VERSION = "1.34"
TRAINER_VERSION, TRAINER_COMMIT = "v2.3.0", "658725bdae5c7e3a0854d93ac6ff492e109a22ab"
TEMPLATE = OPERATOR / "templates" / "trainingruntime.yaml"

INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
OBJECT = {"type": "object"}  # core types (Volume, SecurityContext, ...): checked by kubernetes-validate on the merged Pod
NAME_253 = {"type": "string", "minLength": 1, "maxLength": 253}


def _struct(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


def _list(items: dict, max_items: int) -> dict:
    return {"type": "array", "items": items, "maxItems": max_items}


STRINGS_128 = _list({"type": "string", "maxLength": 65536}, 128)
ENV_VAR = _struct({"name": {"type": "string"}, "value": {"type": "string"}, "valueFrom": OBJECT}, ("name",))
META_PATCH = _struct({"labels": {"type": "object", "additionalProperties": {"type": "string"}},
                      "annotations": {"type": "object", "additionalProperties": {"type": "string"}}})  # "only labels and annotations"
CONTAINER_PATCH = _struct({"name": NAME_253, "env": _list(ENV_VAR, 128), "volumeMounts": _list(OBJECT, 128), "securityContext": OBJECT},
                          ("name",))
POD_SPEC_PATCH = _struct({
    "serviceAccountName": {"type": "string", "maxLength": 253}, "volumes": _list(OBJECT, 128),
    "initContainers": _list(CONTAINER_PATCH, 64), "containers": _list(CONTAINER_PATCH, 64), "imagePullSecrets": _list(OBJECT, 64),
    "securityContext": OBJECT, "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}}, "affinity": OBJECT,
    "tolerations": _list(OBJECT, 128), "schedulingGates": _list(OBJECT, 16), "terminationGracePeriodSeconds": {"type": "integer"},
})
REPLICATED_JOB_PATCH = _struct({
    "name": dict(NAME_253, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
    "template": _struct({"metadata": META_PATCH, "spec": _struct({"template": _struct({"metadata": META_PATCH, "spec": POD_SPEC_PATCH})})}),
}, ("name",))
RUNTIME_PATCH = _struct({
    "manager": NAME_253, "time": {"type": "string"},
    "trainingRuntimeSpec": _struct({"template": _struct({"metadata": META_PATCH,
                                                         "spec": _struct({"replicatedJobs": _list(REPLICATED_JOB_PATCH, 100)})})}),
}, ("manager",))
TRAINER = _struct({
    "image": {"type": "string", "maxLength": 500}, "command": STRINGS_128, "args": STRINGS_128, "env": _list(ENV_VAR, 128),
    "numNodes": INT32, "numProcPerNode": INT32,  # *int32 since v2.2 (IntOrString before)
    "resourcesPerNode": _struct({"limits": OBJECT, "requests": OBJECT, "claims": _list(OBJECT, 16)}),
})
TRAINJOB_SPEC = _struct({
    "runtimeRef": _struct({"name": NAME_253, "apiGroup": {"type": "string"}, "kind": {"type": "string"}}, ("name",)),
    "initializer": OBJECT, "trainer": TRAINER, "runtimePatches": _list(RUNTIME_PATCH, 16), "suspend": {"type": "boolean"},
    "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
    "managedBy": {"enum": ["trainer.kubeflow.org/trainjob-controller", "kueue.x-k8s.io/multikueue"]},
}, ("runtimeRef",))  # no labels, annotations nor podTemplateOverrides in v2.3.0
TRAINJOB_STATUS = _struct({
    "conditions": _list(_struct({k: {"type": "string"} for k in ("type", "status", "reason", "message", "lastTransitionTime")}
                                | {"observedGeneration": {"type": "integer"}}, ("type", "status")), 8),
    "jobsStatus": _list(_struct({"name": NAME_253} | {k: dict(INT32, minimum=0) for k in ("ready", "succeeded", "failed", "active", "suspended")},
                                ("name", "ready", "succeeded", "failed", "active", "suspended")), 100),
})
TRAINJOB = _struct({"apiVersion": {"const": "trainer.kubeflow.org/v1alpha1"}, "kind": {"const": "TrainJob"}, "metadata": OBJECT,
                    "spec": TRAINJOB_SPEC, "status": TRAINJOB_STATUS}, ("apiVersion", "kind", "metadata", "spec"))
# trainingruntime_types.go: TrainingRuntimeSpec {mlPolicy, podGroupPolicy, template (JobSetTemplateSpec)}; the JobSet spec
# fields the runtime uses (jobset v1alpha2, as in test_operator_jobset.py).
RUNTIME_SPEC = _struct({
    "mlPolicy": _struct({"numNodes": INT32, "torch": _struct({"numProcPerNode": INT32, "elasticPolicy": OBJECT}), "mpi": OBJECT}),
    "podGroupPolicy": OBJECT,
    "template": _struct({"metadata": OBJECT, "spec": _struct({
        "network": _struct({"enableDNSHostnames": {"type": "boolean"}, "subdomain": {"type": "string"},
                            "publishNotReadyAddresses": {"type": "boolean"}}),
        "failurePolicy": _struct({"maxRestarts": INT32, "restartStrategy": {"enum": ["Recreate", "BlockingRecreate"]},
                                  "rules": {"type": "array"}}),
        "replicatedJobs": {"type": "array", "items": _struct({"name": {"type": "string"}, "replicas": INT32,
                                                              "template": _struct({"metadata": OBJECT, "spec": OBJECT})}, ("name", "template"))},
    })}),
}, ("template",))
VALIDATOR = jsonschema.Draft202012Validator(TRAINJOB)
NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # TrainJob metadata.name (CEL rule on TrainJob), <= 63


def spec_of(nodes: int = 2, **silo0) -> FederatedFinetuneSpec:
    raw = copy.deepcopy(EXAMPLE["spec"])
    raw["silos"][0].update(silo0, nodes=nodes)
    raw["training"] = dict(raw["training"], batchSize=192)
    return FederatedFinetuneSpec.model_validate(raw)


def trainjob_of(spec: FederatedFinetuneSpec) -> dict:
    return tj.silo_trainjob(OWNER, spec, spec.silos[0])


def pod_patch(trainjob: dict) -> dict:
    [patch] = trainjob["spec"]["runtimePatches"]
    [rjob] = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    return rjob["template"]["spec"]["template"]


def as_pod(trainjob: dict, runtime: dict | None = None) -> dict:
    """What Trainer makes of the runtime's ``node`` pod, the TrainJob's trainer and its patch (and the torch plugin's PET_*)."""
    runtime = runtime or tj.training_runtime()
    [rjob] = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    pod = copy.deepcopy(rjob["template"]["spec"]["template"]["spec"])
    trainer, patch = trainjob["spec"]["trainer"], pod_patch(trainjob)
    node = next(c for c in pod["containers"] if c["name"] == "node")
    node.update(image=trainer["image"], command=trainer["command"], resources=trainer["resourcesPerNode"])
    node["env"] = trainer["env"] + [{"name": n, "value": "x"} for n in tj.RESERVED_ENV]
    for key, value in patch["spec"].items():
        if key != "containers":
            pod[key] = value
    for container in patch["spec"]["containers"]:
        next(c for c in pod["containers"] if c["name"] == container["name"]).update({k: v for k, v in container.items() if k != "name"})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "node", "namespace": "ns", "labels": patch["metadata"]["labels"]},
            "spec": pod}


@pytest.mark.parametrize("nodes, gpus", [(2, 1), (4, 8), (64, 0)])
def test_trainjob_fields_are_trainer_v2_3_fields_and_its_pod_is_a_strict_core_pod(nodes, gpus):
    trainjob = trainjob_of(spec_of(nodes, gpusPerNode=gpus, gpus=gpus))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(trainjob)]
    assert not errors, errors
    name = trainjob["metadata"]["name"]
    assert NAME.match(name) and len(name) <= 63 and len(f"{name}-node-0-63") <= 63  # every pod hostname a DNS label
    kubernetes_validate.validate(as_pod(trainjob), K8S_VERSION, strict=True)
    for container in pod_patch(trainjob)["spec"]["containers"]:  # env only through trainer for these
        assert container["name"] not in ("node", "dataset-initializer", "model-initializer") or "env" not in container
    assert not {e["name"] for e in trainjob["spec"]["trainer"]["env"]} & set(tj.RESERVED_ENV)
    assert TRAINER_VERSION in __doc__ and TRAINER_COMMIT in __doc__


def test_trainer_runtime_ref_and_patch():
    trainjob = trainjob_of(spec_of(4, gpusPerNode=8, gpus=8))
    spec = trainjob["spec"]
    assert trainjob["metadata"]["namespace"] == "org-hospital-a" and trainjob["metadata"]["name"] == js.jobset_name(OWNER, "hospital-a")
    assert trainjob["metadata"]["labels"]["fedshield.io/owner-uid"] == OWNER.uid and "ownerReferences" not in trainjob["metadata"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": "fedshield-torch"}
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"], trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"]) == (4, 8, "8")
    assert spec["suspend"] is False and [p["manager"] for p in spec["runtimePatches"]] == ["fedshield.io/operator"]
    assert pod_patch(trainjob)["metadata"]["labels"]["fedshield.io/silo"] == "hospital-a"  # the aggregator's NetworkPolicy, observe()
    assert mutable_part(trainjob)["spec"] == {"suspend": False}
    assert PLURALS[(trainjob["apiVersion"], trainjob["kind"])] == "trainjobs"
    assert collection_path(trainjob["apiVersion"], "TrainJob", "ns") == "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ns/trainjobs"


def test_the_command_is_torchrun_with_every_rendezvous_flag_from_the_torch_plugin():
    trainjob = trainjob_of(spec_of(2))
    command = trainjob["spec"]["trainer"]["command"]
    jobset_command = js.rank_command(OWNER, spec_of(2).silos[0])
    assert command[:3] == ["python", "-m", "torch.distributed.run"]
    tail = command.index("-m", 3)
    assert command[tail:] == jobset_command[jobset_command.index("-m", 3):]  # the same silo agent, same arguments
    flags = dict(zip(command[3:tail:2], command[4:tail:2], strict=True))
    assert flags == {"--nnodes": "$(PET_NNODES)", "--nproc-per-node": "$(PET_NPROC_PER_NODE)", "--node-rank": "$(PET_NODE_RANK)",
                     "--master-addr": "$(PET_MASTER_ADDR)", "--master-port": "$(PET_MASTER_PORT)", "--max-restarts": "0"}
    assert "args" not in trainjob["spec"]["trainer"]


def test_the_pod_is_the_jobsets_rank_pod_but_for_the_rendezvous():
    spec = spec_of(3, gpusPerNode=2, gpus=2, nodeSelector={"pool": "gpu"}, serviceAccountName="silo-runner")
    rank = js.rank_pod(OWNER, spec, spec.silos[0], "x")
    pod = as_pod(trainjob_of(spec))["spec"]
    jobset_container, node = rank["containers"][0], pod["containers"][0]
    assert {k: v for k, v in pod.items() if k != "containers"} == {k: v for k, v in rank.items() if k != "containers"}
    same = ("image", "imagePullPolicy", "ports", "resources", "securityContext", "volumeMounts")
    assert {k: node[k] for k in same} == {k: jobset_container[k] for k in same}
    rendezvous = {e["name"] for e in js.rendezvous_env("x", spec.silos[0])}
    assert [e for e in node["env"] if e["name"] not in tj.RESERVED_ENV] == [e for e in jobset_container["env"] if e["name"] not in rendezvous]


def test_silos_with_pod_fields_a_trainjob_cannot_carry_are_refused():
    site = Site(multi_node="trainjob")
    assert multi_node_refusal(spec_of(2), site) is None  # no discovery: Trainer missing shows as a 404 (TrainJobMissing)
    odd = spec_of(2, runtimeClassName="nvidia", priorityClassName="high")
    reason, message = multi_node_refusal(odd, site) or ("", "")
    assert reason == "TrainJobUnsupported" and "hospital-a (runtimeClassName, priorityClassName)" in message
    assert multi_node_refusal(odd, Site(multi_node="jobset")) is None  # a JobSet carries them
    with pytest.raises(ValueError, match="runtimeClassName"):
        trainjob_of(odd)
    one_node = FederatedFinetuneSpec.model_validate(dict(EXAMPLE["spec"]))
    assert multi_node_refusal(one_node, site) is None


def test_desired_children_under_trainjob_mode():
    kinds = [(c["kind"], c["metadata"]["namespace"]) for c in desired_children(OWNER, spec_of(2), Site(multi_node="trainjob"))]
    assert ("TrainJob", "org-hospital-a") in kinds and ("JobSet", "org-hospital-a") not in kinds and ("Job", "org-hospital-a") not in kinds
    assert kinds.count(("Job", "org-hospital-b")) == 1  # one-node silos stay Jobs
    one_node = FederatedFinetuneSpec.model_validate(EXAMPLE["spec"])
    assert desired_children(OWNER, one_node, Site(multi_node="trainjob")) == desired_children(OWNER, one_node)


def _runtime_from_template() -> dict:
    """The chart's template with its template lines dropped and expressions blanked (no helm needed)."""
    text = "\n".join(line for line in TEMPLATE.read_text().splitlines() if not line.strip().startswith("{{"))
    return yaml.safe_load(re.sub(r"\{\{[^}]*\}\}", "fedshield/fedshield", text))


def test_the_shipped_runtime_restarts_the_group_as_the_jobset_does():
    runtime = tj.training_runtime()
    assert _runtime_from_template() == runtime  # the chart's template and the builder: one runtime
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in jsonschema.Draft202012Validator(RUNTIME_SPEC).iter_errors(runtime["spec"])]
    assert not errors, errors
    template = runtime["spec"]["template"]["spec"]
    assert template["failurePolicy"] == {"maxRestarts": js.MAX_RESTARTS} == js.silo_jobset(OWNER, spec_of(2), spec_of(2).silos[0])["spec"]["failurePolicy"]
    assert template["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}
    [rjob] = template["replicatedJobs"]
    assert rjob["name"] == "node" and rjob["template"]["metadata"]["labels"] == {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
    assert (rjob["template"]["spec"]["backoffLimit"], rjob["template"]["spec"]["completionMode"]) == (0, "Indexed")
    assert [c["name"] for c in rjob["template"]["spec"]["template"]["spec"]["containers"]] == ["node"]
    kubernetes_validate.validate({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "node", "namespace": "ns"},
                                  "spec": rjob["template"]["spec"]}, K8S_VERSION, strict=True)


def test_the_operator_chart_ships_the_runtime_only_for_trainjob():
    docs = render(OPERATOR, "--set", "multiNode=trainjob", namespace="fedshield", release="fs")
    [runtime] = [d for d in docs if d["kind"] == "ClusterTrainingRuntime"]
    expected = tj.training_runtime(runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
                                   ["containers"][0]["image"])
    assert runtime["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
    assert dict(runtime, metadata=expected["metadata"]) == expected
    for mode in ("auto", "jobset", "off"):
        assert not [d for d in render(OPERATOR, "--set", f"multiNode={mode}", namespace="fedshield", release="fs")
                    if d["kind"] == "ClusterTrainingRuntime"]


CONSENT = ["--set", "membership.federations[0].namespace=fedshield", "--set", "membership.federations[0].name=triage-notes",
           "--set", "operator.serviceAccount=fs-operator"]


def test_the_silo_role_grants_trainjobs_only_when_asked():
    def trainer_rules(*args: str) -> list[dict]:
        role = next(d for d in render(SILO, *CONSENT, *args, namespace="org-hospital-a", release="hospital-a") if d["kind"] == "Role")
        return [r for r in role["rules"] if "trainer.kubeflow.org" in r["apiGroups"]]

    assert trainer_rules() == []
    assert trainer_rules("--set", "operator.trainJobs=true") == [
        {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"], "verbs": ["get", "list", "create", "patch", "delete"]}]


def _trainjob_status(**status) -> dict:
    body = {"apiVersion": tj.API_VERSION, "kind": tj.KIND, "metadata": {"name": "x"}, "spec": {"runtimeRef": {"name": tj.RUNTIME}},
            "status": status}
    assert not list(VALIDATOR.iter_errors(body)), "a status Trainer v2.3.0 would not write"
    return body


def test_status_from_the_trainjob_conditions_ranks_from_pods_and_no_restarts():
    spec = spec_of(2)
    node = {"name": "node", "ready": 0, "succeeded": 0, "failed": 0, "active": 1, "suspended": 0}
    running = _trainjob_status(jobsStatus=[node])
    silo = compute_status(spec, Observed(jobsets={"hospital-a": running}, ready_pods={"hospital-a": 1}), None, "t", 1)["silos"][0]
    assert silo == {"name": "hospital-a", "phase": "Running", "ranksReady": "1/2"}  # restarts: not reported by a TrainJob
    assert compute_status(spec, Observed(jobsets={"hospital-a": _trainjob_status()}), None, "t", 1)["silos"][0]["phase"] == "Pending"
    done = _trainjob_status(conditions=[{"type": "Complete", "status": "True", "reason": "Completed"}], jobsStatus=[dict(node, active=0, succeeded=1)])
    assert compute_status(spec, Observed(jobsets={"hospital-a": done}), None, "t", 1)["silos"][0]["phase"] == "Succeeded"
    failed = _trainjob_status(conditions=[{"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "jobset failed"}])
    silo = compute_status(spec, Observed(jobsets={"hospital-a": failed}), None, "t", 1)["silos"][0]
    assert (silo["phase"], silo["reason"]) == ("Failed", "FailedJobs: jobset failed")
    oom = {"metadata": {"labels": {}}, "status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}}
    silo = compute_status(spec, Observed(jobsets={"hospital-a": failed}, failed_pods={"hospital-a": [oom]}), None, "t", 1)["silos"][0]
    assert (silo["exitCode"], silo["reason"]) == (137, "OOMKilled")  # the failing rank's pod, when seen, as for a JobSet
    suspended = _trainjob_status(conditions=[{"type": "Suspended", "status": "True"}])
    assert compute_status(spec, Observed(jobsets={"hospital-a": suspended}), None, "t", 1)["silos"][0]["phase"] == "Suspended"
