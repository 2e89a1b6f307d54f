"""The current global model as a frozen network, new LoRAs on top of it, and answer logits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from ..config import LoraSpec
from ..learning.model import answer_ids, last_token_logits, load_base, with_lora
from ..workloads.recommendation import Example
from .spec import UnlearningSpec


def accelerator_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def with_adapter(base_path: str | Path, lora: LoraSpec, adapter: Mapping[str, torch.Tensor]) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """Base + the current adapter (shared and private tensors, by full PEFT name) as an unmerged PEFT model."""
    base, tokenizer = load_base(base_path)
    model = with_lora(base, lora.r, lora.alpha, 0.0, lora.target_modules, seed=0)
    params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    if set(params) != set(adapter):
        missing, extra = sorted(set(params) - set(adapter)), sorted(set(adapter) - set(params))
        raise ValueError(f"adapter does not match the LoRA config (missing {missing[:3]}, unexpected {extra[:3]})")
    with torch.no_grad():
        for name, tensor in adapter.items():
            params[name].copy_(tensor.to(params[name].dtype))
    return model, tokenizer


def current_model(base_path: str | Path, lora: LoraSpec, adapter: Mapping[str, torch.Tensor]):
    """Base + the current adapter folded into the weights. Returns ``(model, tokenizer)``; the model is frozen,
    so anything trained on top is a new LoRA."""
    wrapped, tokenizer = with_adapter(base_path, lora, adapter)
    model = wrapped.merge_and_unload()
    model.requires_grad_(False)
    return model.to(accelerator_device()), tokenizer


def adapter_student(base_path: str | Path, lora: LoraSpec, adapter: Mapping[str, torch.Tensor]) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """Base + the current adapter *unmerged*, its LoRA tensors trainable: the rank-preserving student.

    Training it changes the federation's own A and B (same rank, same layout), so its result
    needs no fold and loses nothing to truncation. Returns ``(model, tokenizer)``.
    """
    model, tokenizer = with_adapter(base_path, lora, adapter)
    return model.to(accelerator_device()), tokenizer


def add_lora(model: torch.nn.Module, spec: UnlearningSpec, lora: LoraSpec, seed: int) -> PeftModel:
    """A new LoRA (B = 0, so it starts as the current model) on the targets the federation's adapter has."""
    targets = spec.target_modules or lora.target_modules
    if not set(targets) <= set(lora.target_modules):
        raise ValueError(f"the new LoRA's targets {targets} must be among the adapter's {lora.target_modules} to fold into it")
    return with_lora(model, spec.rank, spec.lora_alpha, 0.0, targets, seed=seed)


def remove_lora(model: PeftModel) -> torch.nn.Module:
    """The frozen model again, without the LoRA layers (they are discarded)."""
    return model.unload()


@torch.no_grad()
def answer_logits(model: torch.nn.Module, tokenizer, examples: Sequence[Example], batch_size: int = 64) -> torch.Tensor:
    """``[N, 2]`` float32 logits of (yes, no) at the answer position, on the CPU."""
    was_training = model.training
    model.eval()
    yes, no = answer_ids(tokenizer)
    out = [last_token_logits(model, tokenizer, [e.prompt for e in examples[i : i + batch_size]])[:, [yes, no]].float().cpu()
           for i in range(0, len(examples), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 2)
