"""Consent (pure): does a silo namespace's `FederationMembership` admit this silo of this federation?

The admin of a silo namespace creates the membership; the operator reads it (never writes it)
and creates nothing in a namespace where no membership admits the silo exactly as specified.
Each function returns what is missing as sentences a person can act on; [] means consent.
"""

from __future__ import annotations

from kubernetes.utils import parse_quantity
from pydantic import ValidationError

from ..api.membership import KIND, FederationMembershipSpec
from ..api.models import FederatedFinetuneSpec, SiloPlacement


def _quantity_over(value: str, cap: str | None) -> bool:
    return cap is not None and parse_quantity(value) > parse_quantity(cap)


def silo_problems(federation: tuple[str, str], spec: FederatedFinetuneSpec, silo: SiloPlacement, membership: FederationMembershipSpec) -> list[str]:
    """What ``silo`` asks for that ``membership`` does not allow (the federation is assumed to be named by it)."""
    out: list[str] = []
    if membership.silos and silo.name not in membership.silos:
        out.append(f"silo name {silo.name!r} (allowed: {', '.join(membership.silos)})")
    image = silo.image or spec.image
    if not any(image.startswith(p) for p in membership.image_prefixes):
        out.append(f"image {image!r} (allowed prefixes: {', '.join(membership.image_prefixes)})")
    secrets = [silo.key_secret] + ([silo.tls.secret_name] if silo.tls else [])
    out += [f"Secret {s!r}" for s in secrets if s not in membership.secrets]
    claims = [silo.dataset_volume.claim_name] + ([spec.base_model.volume_claim] if spec.base_model.volume_claim else [])
    out += [f"PersistentVolumeClaim {c!r}" for c in claims if c not in membership.persistent_volume_claims]
    for what, value, allowed in (("ServiceAccount", silo.service_account_name, membership.service_accounts),
                                 ("PriorityClass", silo.priority_class_name, membership.priority_classes),
                                 ("RuntimeClass", silo.runtime_class_name, membership.runtime_classes)):
        if value and value not in allowed:
            out.append(f"{what} {value!r}")
    for toleration in silo.tolerations:
        if toleration not in membership.tolerations:
            out.append(f"toleration {toleration.model_dump(by_alias=True, exclude_none=True)}")
    caps = membership.limits
    if caps.gpus is not None and silo.pod_gpus > caps.gpus:
        out.append(f"{silo.pod_gpus} GPUs (cap {caps.gpus})")
    if silo.pod_gpus and caps.gpu_resources and silo.gpu_resource not in caps.gpu_resources:
        out.append(f"GPU resource {silo.gpu_resource!r}")
    for what, value, cap in (("cpu", silo.cpu, caps.cpu), ("memory", silo.memory, caps.memory), ("stateSize", silo.state_size, caps.state_size)):
        if _quantity_over(value, cap):
            out.append(f"{what} {value} (cap {cap})")
    return out


def names(membership: FederationMembershipSpec, federation: tuple[str, str]) -> bool:
    return any((f.namespace, f.name) == federation for f in membership.federations)


def check_silo(federation: tuple[str, str], spec: FederatedFinetuneSpec, silo: SiloPlacement, memberships: list[dict]) -> str | None:
    """None when a membership in the silo's namespace admits the silo; else one sentence naming what consent is missing."""
    fed = f"FederatedFinetune {federation[0]}/{federation[1]}"
    candidates: list[tuple[str, FederationMembershipSpec]] = []
    for obj in sorted(memberships, key=lambda m: m.get("metadata", {}).get("name", "")):
        try:
            parsed = FederationMembershipSpec.model_validate(obj.get("spec") or {})
        except ValidationError:
            continue  # the API server's schema refuses these; an invalid one grants nothing
        if names(parsed, federation):
            candidates.append((obj["metadata"]["name"], parsed))
    if not candidates:
        return f'silo {silo.name}: namespace "{silo.namespace}" has no {KIND} admitting {fed}'
    reasons = []
    for name, parsed in candidates:
        problems = silo_problems(federation, spec, silo, parsed)
        if not problems:
            return None
        reasons.append(f"{KIND} {silo.namespace}/{name} does not allow {', '.join(problems)}")
    return f"silo {silo.name}: " + "; ".join(reasons)


def check(federation: tuple[str, str], spec: FederatedFinetuneSpec, memberships: dict[str, list[dict]],
          silos: list[SiloPlacement] | None = None) -> list[str]:
    """One sentence per silo (of ``silos``, default all) whose namespace did not consent; [] when every one did."""
    out = []
    for silo in spec.silos if silos is None else silos:
        problem = check_silo(federation, spec, silo, memberships.get(silo.namespace, []))
        if problem:
            out.append(problem)
    return out


def check_aggregator(spec: FederatedFinetuneSpec, image_prefixes: tuple[str, ...]) -> str | None:
    """None when the aggregator's image is one the operator's installer trusts (it mounts Secrets of the CR's namespace)."""
    image = spec.aggregator.image or spec.image
    if any(image.startswith(p) for p in image_prefixes):
        return None
    return f"aggregator: image {image!r} is not one the operator runs (allowed prefixes: {', '.join(image_prefixes)}; operator chart aggregatorImagePrefixes)"
