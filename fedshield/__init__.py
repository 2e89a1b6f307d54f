"""FedShield: cross-silo federated LoRA fine-tuning under homomorphic encryption."""

__version__ = "0.1.0"
