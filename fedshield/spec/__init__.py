"""Every setting of a federation and of an unlearning, once: one name, one default, one description each.

The local YAML config (``fedshield run``), the pods' config file, the CRDs (``fedshield crd``), the
CLI defaults and the settings tables in docs/ are all derived from these models.
"""

from .base import FinetunePhase, SiloName, SiloPhase, Spec, UnlearningPhase
from .federation import (
    AggregationSpec,
    DataSpec,
    DPSpec,
    EncryptionSpec,
    FederationConfig,
    FederationSettings,
    LimitsSpec,
    LoraSpec,
    ModelSpec,
    PrivacySpec,
    SiloSpec,
    TrainingSpec,
    load_config,
)
from .unlearning import UnlearningSpec

__all__ = [
    "AggregationSpec", "DPSpec", "DataSpec", "EncryptionSpec", "FederationConfig", "FederationSettings", "FinetunePhase", "LimitsSpec",
    "LoraSpec", "ModelSpec", "PrivacySpec", "SiloName", "SiloPhase", "SiloSpec", "Spec", "TrainingSpec", "UnlearningPhase",
    "UnlearningSpec", "load_config",
]
