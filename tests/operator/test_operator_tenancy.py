"""Tenancy through the real kopf handlers against the emulator: the operator acts only where an organisation consented,
and writes only what it owns. Each attack is refused with a readable status, and the emulator's request log shows no
write in the namespace attacked."""

from __future__ import annotations

import asyncio
import copy

import pytest
from support.kube_emulator import CONFIGMAPS, CR, DEPLOYMENTS, JOBS, MERGE, NETWORKPOLICIES, UNLEARNING_CR, writes_in
from support.operator_harness import (
    EXAMPLE,
    NAME,
    NS,
    OWNER,
    SILO_NS,
    UID,
    alive,
    consent,
    create_cr,
    eventually,
    job,
    raw,
    status,
)

from fedshield.operator.manifests import Owner, plan_name

SILOS = EXAMPLE["spec"]["silos"]


def admitted(k8s) -> dict:
    return next((c for c in status(k8s).get("conditions", []) if c["type"] == "Admitted"), {})


def silo_writes(k8s) -> list[str]:
    """Writes in the silo namespaces, but for the memberships the tests create as those namespaces' admins."""
    return [w for ns in sorted(set(SILO_NS.values())) for w in writes_in(k8s, ns) if "/federationmemberships" not in w]


async def refused(k8s, reason: str) -> str:
    await eventually(lambda: admitted(k8s)["reason"] == reason, what=reason)
    condition = admitted(k8s)
    assert condition["status"] == "False" and status(k8s)["phase"] == "Pending"
    return condition["message"]


def spec_with_silo(index: int, **changes) -> dict:
    spec = copy.deepcopy(EXAMPLE["spec"])
    spec["silos"][index].update(changes)
    return spec


async def test_a_namespace_without_consent_gets_nothing_until_its_admin_consents(k8s, operator):
    await consent(k8s, silos=SILOS[:2])  # org-clinic-c has not agreed
    await create_cr(k8s)
    message = await refused(k8s, "ConsentMissing")
    assert message == 'silo clinic-c: namespace "org-clinic-c" has no FederationMembership admitting FederatedFinetune fedshield/triage-notes'
    await asyncio.sleep(1)  # several timer ticks
    assert silo_writes(k8s) == [] and not alive(k8s, (DEPLOYMENTS, NS, f"{NAME}-aggregator"))  # nothing anywhere, not only there
    await consent(k8s, silos=SILOS[2:])
    await eventually(lambda: all(alive(k8s, (JOBS, ns, job(s))) for s, ns in SILO_NS.items()), what="admitted once consented")
    await eventually(lambda: admitted(k8s)["status"] == "True")


async def test_kube_system_cannot_be_named_as_a_silo_namespace(k8s, operator):
    await consent(k8s)
    await create_cr(k8s, spec_with_silo(0, namespace="kube-system", priorityClassName="system-node-critical",
                                        tolerations=[{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]))
    message = await refused(k8s, "ConsentMissing")
    assert 'namespace "kube-system" has no FederationMembership' in message
    assert writes_in(k8s, "kube-system") == [] and silo_writes(k8s) == []  # (no membership posted there)


A_MEMBERSHIP_DOES_NOT_ALLOW = "FederationMembership org-hospital-a/fedshield does not allow "
ATTACKS = [
    ({"image": "evil.example/miner:1"}, "image 'evil.example/miner:1' (allowed prefixes: fedshield/fedshield:)"),
    ({"keySecret": "payments-db"}, "Secret 'payments-db'"),
    ({"tls": {"secretName": "org-admin-tls"}}, "Secret 'org-admin-tls'"),
    ({"datasetVolume": {"claimName": "hr-records"}}, "PersistentVolumeClaim 'hr-records'"),
    ({"serviceAccountName": "org-admin"}, "ServiceAccount 'org-admin'"),
    ({"priorityClassName": "system-node-critical"}, "PriorityClass 'system-node-critical'"),
    ({"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]},
     "toleration {'key': 'node-role.kubernetes.io/control-plane', 'operator': 'Exists', 'effect': 'NoSchedule'}"),
    ({"gpus": 8}, "8 GPUs (cap 2)"),
    ({"memory": "512Gi"}, "memory 512Gi (cap 32Gi)"),
]


@pytest.mark.parametrize("change, missing", ATTACKS, ids=[next(iter(c)) for c, _ in ATTACKS])
async def test_what_the_membership_does_not_allow_is_refused(k8s, operator, change, missing):
    await consent(k8s)
    await create_cr(k8s, spec_with_silo(0, **change))
    message = await refused(k8s, "ConsentMissing")
    assert message == "silo hospital-a: " + A_MEMBERSHIP_DOES_NOT_ALLOW + missing
    await asyncio.sleep(0.5)
    assert silo_writes(k8s) == []


async def test_the_aggregator_runs_only_an_image_the_operator_trusts(k8s, operator):
    await consent(k8s)
    await create_cr(k8s, dict(EXAMPLE["spec"], aggregator=dict(EXAMPLE["spec"]["aggregator"], image="evil.example/reads-secrets:1")))
    message = await refused(k8s, "ConsentMissing")
    assert message.startswith("aggregator: image 'evil.example/reads-secrets:1' is not one the operator runs")
    await asyncio.sleep(0.5)
    children_written = [w for w in writes_in(k8s, NS) if "/federatedfinetunes" not in w and "/events" not in w]  # not the CR nor events
    assert children_written == [] and silo_writes(k8s) == []


async def test_a_membership_for_another_federation_is_no_consent(k8s, operator):
    await consent(k8s, federations=(("other-team", NAME),))  # same name, another namespace
    await create_cr(k8s)
    message = await refused(k8s, "ConsentMissing")
    assert "no FederationMembership admitting FederatedFinetune fedshield/triage-notes" in message
    assert silo_writes(k8s) == []


async def test_a_pre_existing_object_with_a_colliding_name_is_left_untouched_and_reported(k8s, operator):
    await consent(k8s)
    victim = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": job("hospital-a"), "namespace": "org-hospital-a",
                                                                  "labels": {"team": "payments"}},
              "spec": {"suspend": False, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "backup", "image": "backup:1"}]}}}}
    assert (await k8s.post("/apis/batch/v1/namespaces/org-hospital-a/jobs", json=victim)).status == 200
    before = copy.deepcopy(raw(k8s, (JOBS, "org-hospital-a", job("hospital-a"))))
    await create_cr(k8s, dict(EXAMPLE["spec"], suspend=True))
    message = await refused(k8s, "NameConflict")
    assert message == (f"Job org-hospital-a/{job('hospital-a')} exists but not created by this FederatedFinetune: left untouched "
                       "and nothing created (delete or rename it, or rename this FederatedFinetune)")
    await asyncio.sleep(0.5)
    assert silo_writes(k8s) == ["POST /apis/batch/v1/namespaces/org-hospital-a/jobs"]  # the test's own creation only
    assert raw(k8s, (JOBS, "org-hospital-a", job("hospital-a"))) == before
    # Deleting the CR does not delete what it did not create.
    assert (await k8s.delete(f"/apis/fedshield.io/v1alpha1/namespaces/{NS}/federatedfinetunes/{NAME}")).status == 200
    await eventually(lambda: k8s.objects[CR, NS, NAME].deleted, what="CR deleted")
    assert alive(k8s, (JOBS, "org-hospital-a", job("hospital-a"))) and raw(k8s, (JOBS, "org-hospital-a", job("hospital-a"))) == before
    assert [w for w in silo_writes(k8s) if not w.startswith("POST")] == []


async def test_an_aggregator_name_taken_in_the_cr_namespace_is_left_untouched(k8s, operator):
    await consent(k8s)
    squatter = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": plan_name(OWNER), "namespace": NS}, "data": {"k": "v"}}
    assert (await k8s.post(f"/api/v1/namespaces/{NS}/configmaps", json=squatter)).status == 200
    await create_cr(k8s)
    message = await refused(k8s, "NameConflict")
    assert f"ConfigMap {NS}/{plan_name(OWNER)}" in message
    assert raw(k8s, (CONFIGMAPS, NS, plan_name(OWNER)))["data"] == {"k": "v"} and silo_writes(k8s) == []
    assert not alive(k8s, (DEPLOYMENTS, NS, f"{NAME}-aggregator"))


async def test_two_crs_of_the_same_name_in_two_namespaces_do_not_collide(k8s, operator):
    other = Owner(NAME, "team-b", "5e1f0000-aaaa-bbbb-cccc-ddddeeeeffff")
    await consent(k8s, federations=((NS, NAME), (other.namespace, NAME)))
    await create_cr(k8s)
    await create_cr(k8s, namespace=other.namespace, uid=other.uid)
    both = [(ns, job(s, o)) for o in (OWNER, other) for s, ns in SILO_NS.items()]
    assert len(set(both)) == 6
    await eventually(lambda: all(alive(k8s, (JOBS, ns, name)) for ns, name in both), timeout=30, what="both federations' Jobs")  # 2 CRs: slow on a loaded machine
    for silo, ns in SILO_NS.items():
        assert alive(k8s, (CONFIGMAPS, ns, plan_name(OWNER))) and alive(k8s, (CONFIGMAPS, ns, plan_name(other)))
        assert raw(k8s, (JOBS, ns, job(silo, other)))["metadata"]["labels"]["fedshield.io/owner-uid"] == other.uid
    # Deleting one leaves the other's children alone.
    assert (await k8s.delete(f"/apis/fedshield.io/v1alpha1/namespaces/team-b/federatedfinetunes/{NAME}")).status == 200
    await eventually(lambda: k8s.objects[CR, "team-b", NAME].deleted, timeout=30, what="team-b's CR deleted")  # finalizers on a loaded machine
    for silo, ns in SILO_NS.items():
        assert k8s.objects[JOBS, ns, job(silo, other)].deleted and alive(k8s, (JOBS, ns, job(silo)))


async def test_a_field_another_manager_set_is_reported_and_never_forced(k8s, operator):
    """Server-side apply: someone scales the aggregator by hand; the suspend that would set replicas conflicts with
    that manager, so the operator reports it and leaves their value (field ownership is the API server's)."""
    await consent(k8s)
    await create_cr(k8s)
    deployment = f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}-aggregator"
    await eventually(lambda: alive(k8s, (DEPLOYMENTS, NS, f"{NAME}-aggregator")), what="aggregator Deployment")
    scaled = await k8s.patch(deployment, json={"spec": {"replicas": 2}}, headers=MERGE, params={"fieldManager": "kubectl-edit"})
    assert scaled.status == 200
    response = await k8s.patch(f"/apis/fedshield.io/v1alpha1/namespaces/{NS}/federatedfinetunes/{NAME}",
                               json={"spec": {"suspend": True}, "metadata": {"generation": 2}}, headers=MERGE)
    assert response.status == 200
    message = await refused(k8s, "FieldConflict")
    assert 'conflict with "kubectl-edit"' in message and ".spec.replicas" in message
    assert raw(k8s, (DEPLOYMENTS, NS, f"{NAME}-aggregator"))["spec"]["replicas"] == 2
    assert not [r for r in k8s if r.params.get("force") and r.params.get("fieldManager") != "fedshield-operator"]
    assert not [r for r in k8s if r.params.get("force") and "/deployments/" in str(r.url)]  # never forced over kubectl-edit


async def test_deleting_an_unlearning_whose_status_names_a_foreign_job_deletes_nothing_foreign(k8s, operator):
    backup = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "nightly-backup", "namespace": "payments"},
              "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "b", "image": "backup:1"}]}}}}
    assert (await k8s.post("/apis/batch/v1/namespaces/payments/jobs", json=backup)).status == 200
    body = {"apiVersion": "fedshield.io/v1alpha1", "kind": "FederatedUnlearning", "metadata": {"name": "forget-1", "namespace": NS},
            "spec": {"finetune": "missing", "silo": "hospital-a", "forget": {"users": ["u1"]}, "requestedBy": "dpo"}}
    path = f"/apis/fedshield.io/v1alpha1/namespaces/{NS}/federatedunlearnings"
    assert (await k8s.post(path, json=body)).status == 200
    await eventually(lambda: raw(k8s, (UNLEARNING_CR, NS, "forget-1")).get("status", {}).get("phase") == "Failed", what="refused")
    forged = {"status": {"jobName": "nightly-backup", "jobNamespace": "payments",
                         "applyJobs": [{"silo": "x", "namespace": "payments", "jobName": "nightly-backup", "phase": "Running"}]}}
    assert (await k8s.patch(f"{path}/forget-1/status", json=forged, headers=MERGE)).status == 200
    assert (await k8s.delete(f"{path}/forget-1")).status == 200
    await eventually(lambda: k8s.objects[UNLEARNING_CR, NS, "forget-1"].deleted, what="unlearning deleted")
    assert alive(k8s, (JOBS, "payments", "nightly-backup"))
    assert writes_in(k8s, "payments") == ["POST /apis/batch/v1/namespaces/payments/jobs"]  # the test's own creation only


async def test_a_cr_without_tls_is_refused_unless_it_says_insecure(k8s, operator):
    await consent(k8s)
    spec = copy.deepcopy(EXAMPLE["spec"])
    del spec["aggregator"]["tls"]
    for silo in spec["silos"]:
        del silo["tls"]
    await create_cr(k8s, spec)
    await eventually(lambda: status(k8s).get("phase") == "Failed", what="refused")
    condition = status(k8s)["conditions"][0]
    assert condition["reason"] == "InvalidSpec" and "set insecure: true to run without transport security" in condition["message"]
    assert silo_writes(k8s) == [] and not alive(k8s, (DEPLOYMENTS, NS, f"{NAME}-aggregator"))


async def test_insecure_true_runs_plain_http_and_status_says_so(k8s, operator):
    spec = copy.deepcopy(EXAMPLE["spec"])
    del spec["aggregator"]["tls"]
    for silo in spec["silos"]:
        del silo["tls"]
    await consent(k8s, silos=spec["silos"])
    await create_cr(k8s, dict(spec, insecure=True))
    await eventually(lambda: all(alive(k8s, (JOBS, ns, job(s))) for s, ns in SILO_NS.items()), what="silo Jobs")
    await eventually(lambda: any(c["type"] == "Insecure" for c in status(k8s).get("conditions", [])))
    insecure = next(c for c in status(k8s)["conditions"] if c["type"] == "Insecure")
    assert insecure["status"] == "True" and "plain HTTP" in insecure["message"]
    assert status(k8s)["aggregatorEndpoint"].startswith("http://")


async def test_the_aggregator_gets_a_default_deny_network_policy(k8s, operator):
    await consent(k8s)
    await create_cr(k8s)
    await eventually(lambda: alive(k8s, (NETWORKPOLICIES, NS, f"{NAME}-aggregator")) and alive(k8s, (DEPLOYMENTS, NS, f"{NAME}-aggregator")),
                     what="NetworkPolicy and aggregator")
    policy = raw(k8s, (NETWORKPOLICIES, NS, f"{NAME}-aggregator"))["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"] and policy["egress"] == []
    api, metrics = policy["ingress"]
    namespaces = api["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"]
    assert namespaces == sorted(set(SILO_NS.values()))
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert raw(k8s, (DEPLOYMENTS, NS, f"{NAME}-aggregator"))["spec"]["template"]["metadata"]["labels"]["fedshield.io/owner-uid"] == UID


async def test_a_membership_without_the_operator_role_binding_is_reported_and_nothing_is_written(k8s, operator):
    await consent(k8s)
    k8s.forbidden = frozenset({"org-clinic-c"})  # consent made by hand, without the silo chart's RoleBinding
    await create_cr(k8s)
    message = await refused(k8s, "RoleMissing")
    assert message.startswith('the operator may not write in namespace "org-clinic-c"')
    assert silo_writes(k8s) == [] and not alive(k8s, (DEPLOYMENTS, NS, f"{NAME}-aggregator"))
    k8s.forbidden = frozenset()  # the admin installs the chart
    try:
        await eventually(lambda: all(alive(k8s, (JOBS, ns, job(s))) for s, ns in SILO_NS.items()), timeout=20)
    except AssertionError:
        raise AssertionError(f"not admitted with the RoleBinding: status {status(k8s)}") from None
