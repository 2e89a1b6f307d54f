"""The `FederatedFinetune` custom resource: pydantic models (the one source of truth) and the CRD built from them."""

from .models import GROUP, KIND, PLURAL, SHORT_NAME, VERSION, FederatedFinetuneSpec, FederatedFinetuneStatus

__all__ = ["GROUP", "KIND", "PLURAL", "SHORT_NAME", "VERSION", "FederatedFinetuneSpec", "FederatedFinetuneStatus"]
