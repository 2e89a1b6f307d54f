"""Spec of `FederationMembership` (fedshield.io/v1alpha1): an organisation's consent to host silos.

The admin of a silo namespace creates it there (the silo Helm chart does). It names the
FederatedFinetunes (namespace/name) that may place a silo in this namespace and what such a
silo may use: image prefixes, Secrets, PersistentVolumeClaims, ServiceAccounts, priority and
runtime classes, tolerations, and per-silo resource caps. Without a membership that matches a
silo, the operator creates nothing in the namespace and says why in the CR's status.
Same conventions as `models.py`: camelCase on the wire, a description on every field.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from ..spec.base import SiloName
from .models import DNS_LABEL, DNS_SUBDOMAIN, EXTENDED_RESOURCE, QUANTITY, Model, Toleration

Name = Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN)]
Resource = Annotated[str, StringConstraints(pattern=EXTENDED_RESOURCE)]
Prefix = Annotated[str, StringConstraints(min_length=1, max_length=512)]

KIND, PLURAL, SINGULAR, SHORT_NAME = "FederationMembership", "federationmemberships", "federationmembership", "fmember"


class FederationRef(Model):
    namespace: str = Field(description="Namespace of the FederatedFinetune.", pattern=DNS_LABEL)
    name: str = Field(description="Name of the FederatedFinetune.", pattern=DNS_SUBDOMAIN)


class ResourceCaps(Model):
    """Upper bounds per silo pod; an absent bound is not checked."""

    gpus: int | None = Field(None, ge=0, le=16, description="Most GPUs one silo pod may request.")
    gpu_resources: list[Resource] = Field([], max_length=16, description="Extended resource names GPUs may be requested as (empty: any).")
    cpu: str | None = Field(None, pattern=QUANTITY, description="Largest CPU request.")
    memory: str | None = Field(None, pattern=QUANTITY, description="Largest memory request and limit.")
    state_size: str | None = Field(None, pattern=QUANTITY, description="Largest state volume.")


class FederationMembershipSpec(Model):
    """Which federations may run a silo in this namespace, and with what."""

    federations: list[FederationRef] = Field(min_length=1, max_length=256, description="The FederatedFinetunes allowed to place a silo here.")
    silos: list[SiloName] = Field([], max_length=64, description="Silo names they may use here (empty: any).")
    image_prefixes: list[Prefix] = Field(min_length=1, max_length=32,
                                      description="A silo's image must start with one of these (e.g. 'example.org/fedshield/fedshield:').")
    secrets: list[Name] = Field([], max_length=64, description="Secrets a silo may mount (its keySecret and tls.secretName).")
    persistent_volume_claims: list[Name] = Field([], max_length=64,
                                                description="Claims a silo may mount (its datasetVolume and the base model's volumeClaim).")
    service_accounts: list[Name] = Field([], max_length=32, description="ServiceAccounts a silo pod may run as (none given: the namespace default).")
    priority_classes: list[Name] = Field([], max_length=32, description="PriorityClasses a silo pod may use.")
    runtime_classes: list[Name] = Field([], max_length=32, description="RuntimeClasses a silo pod may use.")
    tolerations: list[Toleration] = Field([], max_length=32, description="Tolerations a silo pod may carry (each must equal one of these).")
    limits: ResourceCaps = Field(default_factory=ResourceCaps, description="Resource caps per silo pod.")
