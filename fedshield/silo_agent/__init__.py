"""The silo agent: trains LoRA locally with DeepSpeed, uploads encrypted pruned updates, applies aggregates."""
