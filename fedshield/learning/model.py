"""Base model, tokenizer and LoRA: loading, the demo's tiny default, Yes/No scoring.

The real path is ``from_pretrained`` on a local directory: a user's model, or one written
by ``fedshield models import`` (e.g. SmolLM2 from its packaged GGUF file). The demo's default
is a tiny Llama-shaped model built from a config, with a word-level tokenizer trained locally
with ``tokenizers``, written once to a directory and then loaded through the same path (no
model hub is ever contacted).

Scoring works for any tokenizer: a model without a pad token pads with its end-of-text
token, left and right padding give the same logits, the answers are the tokens the tokenizer
produces for " yes" / " no" after a prompt (``Ġyes`` for byte-level BPE, ``yes`` for the
word-level tiny tokenizer), and prompts longer than the model's context are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from ..workloads.recommendation import ANSWER_NO, ANSWER_YES, prompt_for

ANSWER_SEPARATOR = " "  # what comes between a prompt and its answer
PROBE_PROMPT = prompt_for(["x"], ["y"], "z")  # answers are located after a prompt of this shape by default

SPECIAL_TOKENS = {"pad_token": "[pad]", "unk_token": "[unk]", "bos_token": "[bos]", "eos_token": "[eos]"}


def build_tiny_base(out_dir: str | Path, corpus: Sequence[str], seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """Write a tiny Llama-shaped model and a word-level tokenizer for ``corpus`` (if not there yet)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    # words and punctuation, and digits one by one ("34yo" is 3, 4, yo): numbers never fall out of the vocabulary
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
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


def base_dtype() -> torch.dtype:
    """bf16 for the frozen base on a GPU that has it, fp32 on CPU (LoRA weights stay fp32 either way)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def with_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """``tokenizer`` with a pad token: its own, else its end-of-text token."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad token nor an end-of-text token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a local model directory, with a pad token."""
    return with_pad_token(AutoTokenizer.from_pretrained(path, local_files_only=True))


def load_base(path: str | Path, dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a local directory (never a hub); ``dtype`` defaults to ``base_dtype()``."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model directory (no config.json); "
                                "a GGUF file or a packaged model is written as one by `fedshield models import`")
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype or base_dtype())
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def with_lora(model: torch.nn.Module, r: int, alpha: int, dropout: float, targets: Sequence[str], seed: int) -> PeftModel:
    """Wrap with a LoRA adapter; ``seed`` makes every silo start from the same adapter."""
    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets)))


def chat_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, system: str | None = None) -> str:
    """``prompt`` as a user turn in the tokenizer's chat template, ending where the assistant's reply begins."""
    if not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def answer_ids(tokenizer: PreTrainedTokenizerBase, prompt: str | None = None) -> tuple[int, int]:
    """The first token of the answers "yes" and "no" as the tokenizer encodes them after ``prompt``.

    The answer follows a space (``ANSWER_SEPARATOR``), or directly when the prompt ends in
    white space (a chat prompt ends with the assistant's header and a newline).
    """
    prompt = PROBE_PROMPT if prompt is None else prompt
    separator = "" if prompt[-1:].isspace() else ANSWER_SEPARATOR
    head = tokenizer(prompt)["input_ids"]
    ids = []
    for answer in (ANSWER_YES, ANSWER_NO):
        full = tokenizer(prompt + separator + answer)["input_ids"]
        if len(full) <= len(head) or full[: len(head)] != head:
            raise ValueError(f"the tokenizer does not encode {prompt!r} followed by {answer!r} as the prompt's tokens "
                             "and then the answer's")
        if full[len(head)] == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no token for the answer {answer!r}")
        ids.append(full[len(head)])
    if ids[0] == ids[1]:
        raise ValueError("the answers 'yes' and 'no' start with the same token")
    return ids[0], ids[1]


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DeepSpeed engine (``.module``) or an Opacus GradSampleModule (``._module``)."""
    while True:
        inner = getattr(model, "_module", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def context_limit(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> int:
    """The longest prompt, in tokens, that the model and its tokenizer take."""
    config = unwrapped(model).config
    limits = [getattr(config, key, None) for key in ("max_position_embeddings", "n_positions")]
    limits.append(tokenizer.model_max_length)
    return int(min(n for n in limits if isinstance(n, int) and n > 0))


def _refuse_longer_than(limit: int, lengths: Sequence[int], prompts: Sequence[str]) -> None:
    for i, n in enumerate(lengths):
        if n > limit:
            raise ValueError(f"prompt {i} has {n} tokens; the model's context is {limit}: {prompts[i][:80]!r}...")


def check_context(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> int:
    """The longest prompt's length in tokens; refuses (ValueError naming the prompt) any longer than the context.

    A silo calls it on all its examples before the first round, so nothing is half-trained.
    """
    lengths = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]] if len(prompts) else [0]
    _refuse_longer_than(context_limit(model, tokenizer), lengths, prompts)
    return max(lengths)


def encode_prompts(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]):
    """A padded batch of ``prompts``; a prompt longer than the context is refused (it is never truncated)."""
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    _refuse_longer_than(context_limit(model, tokenizer), batch["attention_mask"].sum(dim=1).tolist(), prompts)
    return batch


def last_token_logits(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> torch.Tensor:
    """Next-token logits after each prompt, the same for left or right padding.

    Positions count real tokens only (a left-padded prompt starts at position 0), and the
    last real position of each row is gathered.
    """
    device = next(model.parameters()).device
    batch = encode_prompts(model, tokenizer, prompts).to(device)
    mask = batch["attention_mask"]
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions).logits
    last = mask.shape[1] - 1 - mask.flip(dims=[1]).argmax(dim=1)
    return logits[torch.arange(logits.shape[0], device=device), last]


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, yes: int, no: int) -> torch.Tensor:
    """Cross-entropy of the right answer between the two answer tokens (what the score uses)."""
    return answer_losses(logits, labels, yes, no).mean()


def answer_losses(logits: torch.Tensor, labels: torch.Tensor, yes: int, no: int) -> torch.Tensor:
    """Per-record cross-entropy of the right answer between the two answer tokens."""
    return torch.nn.functional.cross_entropy(logits[:, [yes, no]].float(), 1 - labels.long().to(logits.device), reduction="none")


@torch.no_grad()
def yes_probabilities(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """P(yes) normalised over the two answers, per prompt."""
    was_training = model.training
    model.eval()
    yes, no = answer_ids(tokenizer, prompts[0] if len(prompts) else None)
    out = []
    for i in range(0, len(prompts), batch_size):
        logits = last_token_logits(model, tokenizer, prompts[i : i + batch_size])
        out.append(torch.softmax(logits[:, [yes, no]].float(), dim=-1)[:, 0].cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.empty(0)
