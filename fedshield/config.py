"""The federation's configuration: the spec (fedshield/spec/federation.py), under the names callers import."""

from .spec.federation import (
    MAX_DECLARED_SAMPLES,
    MULTI_NODE_DP_SGD_MESSAGE,
    PERSONALISE_ZERO3_MESSAGE,
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
    config_yaml,
    load_config,
    uneven_batch_message,
)

__all__ = [
    "MAX_DECLARED_SAMPLES", "MULTI_NODE_DP_SGD_MESSAGE", "PERSONALISE_ZERO3_MESSAGE", "AggregationSpec", "DPSpec", "DataSpec", "EncryptionSpec", "FederationConfig", "FederationSettings",
    "LimitsSpec", "LoraSpec", "ModelSpec", "PrivacySpec", "SiloSpec", "TrainingSpec", "config_yaml", "load_config",
    "uneven_batch_message",
]
