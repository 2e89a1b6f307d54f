"""Spec and status of `FederatedUnlearning` (fedshield.io/v1alpha1): forget users at one silo of a finished federation.

Same conventions as `models.py`: camelCase on the wire, a description on every field,
cross-field rules written twice (a pydantic validator here, a CEL rule in the CRD), the
whole spec immutable once created.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from ..spec.base import SiloName, UnlearningPhase
from ..spec.unlearning import UnlearningSpec
from .models import DNS_SUBDOMAIN, Condition, Model

KIND, PLURAL, SINGULAR, SHORT_NAME = "FederatedUnlearning", "federatedunlearnings", "federatedunlearning", "fu"
CONFIGMAP_KEY = r"^[-._a-zA-Z0-9]+$"
RELATIVE_PATH = r"^[^/]+(/[^/]+)*$"  # relative, no empty segment; ".." is refused by the validator and the CEL rule
UserId = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^\S+$")]
PHASES = tuple(p.value for p in UnlearningPhase)


class ConfigMapKeyRef(Model):
    name: str = Field(description="ConfigMap in the silo's namespace; mounted into the unlearning pod, never read by the operator.",
                      pattern=DNS_SUBDOMAIN)
    key: str = Field(description="Key of the ConfigMap holding the user ids, one per line.", min_length=1, max_length=253,
                     pattern=CONFIGMAP_KEY)


class ForgetSpec(Model):
    """Where the ids of the users to forget are: exactly one of users, configMap and path."""

    users: list[UserId] | None = Field(None, min_length=1, max_length=10000,
                                       description="The user ids, inline (the operator writes them into a ConfigMap it owns in the silo's namespace).")
    config_map: ConfigMapKeyRef | None = Field(None, description="A ConfigMap key in the silo's namespace with one user id per line.")
    path: str | None = Field(None, min_length=1, max_length=1024, pattern=RELATIVE_PATH,
                             description="A file on the silo's state volume (relative to it), one user id per line.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ForgetSpec:
        if sum(x is not None for x in (self.users, self.config_map, self.path)) != 1:
            raise ValueError("forget: give exactly one of users, configMap and path")
        if self.path is not None and ".." in self.path.split("/"):
            raise ValueError("forget.path: must stay on the state volume (no '..')")
        return self


class FederatedUnlearningSpec(UnlearningSpec):
    """Which users to forget, at which silo of which federation, with which E2URec settings (fedshield/spec/unlearning.py)."""

    finetune: str = Field(description="Name of the FederatedFinetune (same namespace) whose global adapter is to forget the users.",
                          pattern=DNS_SUBDOMAIN)
    silo: SiloName = Field(description="The silo of that federation holding the users' records; the unlearning Job runs there only.")
    forget: ForgetSpec = Field(description="The users to forget.")
    requested_by: str = Field(min_length=1, max_length=200, description="Who asked (a person, ticket or system); kept in the audit record.")
    reason: str = Field("", max_length=500, description="Why, e.g. 'GDPR art. 17 request'; kept in the audit record.")


# CEL rules equivalent to ForgetSpec's validator, placed on the `forget` object of the CRD.
FORGET_RULES = [
    {"rule": "(has(self.users) ? 1 : 0) + (has(self.configMap) ? 1 : 0) + (has(self.path) ? 1 : 0) == 1",
     "message": "forget: give exactly one of users, configMap and path"},
    {"rule": "!has(self.path) || !self.path.matches('(^|/)[.][.](/|$)')",
     "message": "forget.path: must stay on the state volume (no '..')"},
]


class ApplyJobStatus(Model):
    silo: str = Field(description="A silo of the federation other than the forgetting one.")
    namespace: str = Field(description="The silo's namespace.")
    job_name: str = Field(description="The Job that restarts the silo agent on its state to apply the published unlearning.")
    phase: UnlearningPhase = Field(description="Phase of that Job.")


class FederatedUnlearningStatus(Model):
    phase: UnlearningPhase = Field(UnlearningPhase.PENDING, description="Overall phase.")
    message: str | None = Field(None, description="What is happening or what went wrong, in one line.")
    observed_generation: int | None = Field(None, description="The spec generation last reconciled.")
    conditions: list[Condition] = Field([], description="Standard conditions: Progressing, Forgotten, Applied, Failed.")
    job_name: str | None = Field(None, description="The unlearning Job, in jobNamespace.")
    job_namespace: str | None = Field(None, description="The forgetting silo's namespace.")
    upload_sha256: str | None = Field(None, description="SHA-256 of the uploaded replacement: what other silos approve "
                                                       "(`fedshield approve --version N --sha256 ...`).")
    approvals: int | None = Field(None, description="Other silos that approved the upload so far (while it waits for approval).")
    approvals_needed: int | None = Field(None, description="Approvals the aggregator needs before it publishes the upload "
                                                          "(privacy.unlearningApprovals).")
    unlearning_version: int | None = Field(None, description="Version of this unlearning in the aggregator's ledger (0 for the first).")
    users_count: int | None = Field(None, description="Users forgotten (from the aggregator's audit record).")
    users_sha256: str | None = Field(None, description="SHA-256 of the sorted user ids, one per line (from the audit record).")
    forget_auc_before: float | None = Field(None, description="AUC on the forgotten users' records before unlearning.")
    forget_auc_after: float | None = Field(None, description="AUC on the forgotten users' records after unlearning.")
    test_auc_before: float | None = Field(None, description="AUC on the silo's held-out records before unlearning.")
    test_auc_after: float | None = Field(None, description="AUC on the silo's held-out records after unlearning.")
    duration_seconds: float | None = Field(None, description="Time the silo spent unlearning.")
    adapter_version_before: int | None = Field(None, description="Global adapter version replaced by the unlearning.")
    adapter_version_after: int | None = Field(None, description="Global adapter version the unlearning published.")
    applied_silos: str | None = Field(None, description="Silos that applied the new global adapter, out of all.")
    apply_jobs: list[ApplyJobStatus] = Field([], description="One Job per other silo of the federation, applying the unlearning.")
    start_time: str | None = Field(None, description="When the unlearning Job was created.")
    completion_time: str | None = Field(None, description="When the unlearning succeeded or failed.")
