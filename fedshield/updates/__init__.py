"""Update vectors: layout of shared LoRA tensors, pruning masks, error feedback."""

from .feedback import compensate, next_residual, scatter
from .layout import VectorLayout, is_private, lora_parameters
from .masks import kept_count, next_score, round_mask, rounds_to_cover

__all__ = ["VectorLayout", "compensate", "is_private", "kept_count", "lora_parameters", "next_residual", "next_score", "round_mask", "rounds_to_cover", "scatter"]
