"""Base model, tokenizer and LoRA: loading, the demo's tiny default, Yes/No scoring.

The real path is ``from_pretrained`` on a local directory. The demo's default is a
tiny Llama-shaped model built from a config, with a word-level tokenizer trained
locally with ``tokenizers``, written once to a directory and then loaded through
the same ``from_pretrained`` path (no model hub is ever contacted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..workloads.recommendation import ANSWER_NO, ANSWER_YES

SPECIAL_TOKENS = {"pad_token": "[pad]", "unk_token": "[unk]", "bos_token": "[bos]", "eos_token": "[eos]"}


def build_tiny_base(out_dir: str | Path, corpus: Sequence[str], seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """Write a tiny Llama-shaped model and a word-level tokenizer for ``corpus`` (if not there yet)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS.values()))
    tok.train_from_iterator(list(corpus) + [f"{ANSWER_YES} {ANSWER_NO}"], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def load_base(path: str | Path) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """A causal LM and its tokenizer from a local directory (never a hub)."""
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, torch_dtype=torch.float32)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def with_lora(model: torch.nn.Module, r: int, alpha: int, dropout: float, targets: Sequence[str], seed: int) -> PeftModel:
    """Wrap with a LoRA adapter; ``seed`` makes every silo start from the same adapter."""
    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets)))


def answer_ids(tokenizer: PreTrainedTokenizerFast) -> tuple[int, int]:
    yes, no = tokenizer.convert_tokens_to_ids([ANSWER_YES, ANSWER_NO])
    if tokenizer.unk_token_id in (yes, no):
        raise ValueError("the tokenizer has no single token for the answers 'yes' and 'no'")
    return yes, no


def last_token_logits(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str]) -> torch.Tensor:
    """Next-token logits after each prompt (right padding; the last real position is gathered)."""
    device = next(model.parameters()).device
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True).to(device)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    last = batch["attention_mask"].sum(dim=1) - 1
    return logits[torch.arange(logits.shape[0], device=device), last]


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, yes: int, no: int) -> torch.Tensor:
    """Cross-entropy of the right answer between the two answer tokens (what the score uses)."""
    return torch.nn.functional.cross_entropy(logits[:, [yes, no]].float(), 1 - labels.long().to(logits.device))


@torch.no_grad()
def yes_probabilities(model: torch.nn.Module, tokenizer, prompts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """P(yes) normalised over the two answers, per prompt."""
    was_training = model.training
    model.eval()
    yes, no = answer_ids(tokenizer)
    out = []
    for i in range(0, len(prompts), batch_size):
        logits = last_token_logits(model, tokenizer, prompts[i : i + batch_size])
        out.append(torch.softmax(logits[:, [yes, no]].float(), dim=-1)[:, 0].cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.empty(0)
