"""The model side of the instruction workload: encoding, the loss on response tokens only, evaluation.

An example is encoded as its prompt (the tokenizer's chat template up to where the assistant's
reply begins, when the model has one; else the plain prompt and a newline) followed by its
response (the rest of the rendered conversation, i.e. the reply and the template's end of turn;
else the reply and the end-of-text token). Prompt and response are tokenised separately, so
the label mask is exact: -100 on every prompt token and on padding, the token ids on the
response. Evaluation reports the mean response-token loss, its perplexity, token accuracy,
and exact match (greedy decoding, normalised strings) when every reference response is a
short label; the headline is exact match then, token accuracy otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, cast

import torch
from transformers import PreTrainedTokenizerBase

from ..workloads.base import Column, DataError, Evaluation, Split, Workload
from ..workloads.instruction import InstructionExample, load_split, normalise
from .lockstep import all_ranks
from .model import context_limit

IGNORE = -100  # the label of a position that is not learned
PLAIN_SEPARATOR = "\n"  # between prompt and response for a model without a chat template


@dataclass(frozen=True)
class Encoded:
    prompt_ids: list[int]
    response_ids: list[int]

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids

    @property
    def labels(self) -> list[int]:
        return [IGNORE] * len(self.prompt_ids) + self.response_ids


def _messages(example: InstructionExample) -> list[dict[str, str]]:
    return [{"role": t.role, "content": t.content} for t in example.context]


def prompt_text(tokenizer: PreTrainedTokenizerBase, example: InstructionExample) -> str:
    """What the model reads before its reply."""
    if tokenizer.chat_template:
        # transformers types the result for every mode; with tokenize=False it is the rendered text
        return cast(str, tokenizer.apply_chat_template(_messages(example), tokenize=False, add_generation_prompt=True))
    return example.prompt + PLAIN_SEPARATOR


def encode(tokenizer: PreTrainedTokenizerBase, example: InstructionExample) -> Encoded:
    """Prompt and response token ids (the response ends with the end of turn or end of text)."""
    prompt = prompt_text(tokenizer, example)
    if tokenizer.chat_template:
        # transformers types the result for every mode; with tokenize=False it is the rendered text
        full = cast(str, tokenizer.apply_chat_template(_messages(example) + [{"role": "assistant", "content": example.response}],
                                                       tokenize=False))
        if not full.startswith(prompt):
            raise DataError(example.source or "<examples>", example.line or None,
                            "the chat template renders the conversation differently from its prompt; cannot mask it")
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    else:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no end-of-text token to end a response with")
        prompt_ids = tokenizer(prompt)["input_ids"]
        response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Encoded(list(prompt_ids), list(response_ids))


def label_tokens(tokenizer: PreTrainedTokenizerBase, example: InstructionExample) -> int:
    """How many tokens the response's text alone takes (what exact match has to generate)."""
    return len(tokenizer(example.response, add_special_tokens=False)["input_ids"])


def check_examples(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, examples: Sequence[InstructionExample]) -> int:
    """The longest encoded example in tokens; an example longer than the context is a ``DataError`` naming its file and line."""
    limit = context_limit(model, tokenizer)
    longest = 0
    for e in examples:
        enc = encode(tokenizer, e)
        n = len(enc.input_ids)
        if n > limit:
            raise DataError(e.source or "<examples>", e.line or None,
                            f"the example has {n} tokens (prompt {len(enc.prompt_ids)}, response {len(enc.response_ids)}); "
                            f"the model's context is {limit}")
        longest = max(longest, n)
    return longest


def collate(tokenizer: PreTrainedTokenizerBase, encoded: Sequence[Encoded]) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding)."""
    width = max(len(e.input_ids) for e in encoded)
    pad = tokenizer.pad_token_id
    ids = [e.input_ids + [pad] * (width - len(e.input_ids)) for e in encoded]
    mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in encoded]
    labels = [e.labels + [IGNORE] * (width - len(e.labels)) for e in encoded]
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}


def _response_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(next-token logits, their targets: -100 off the response) of a collated batch."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    return logits, batch["labels"][:, 1:]


def token_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of the next-token cross-entropy over response tokens, how many there are)."""
    logits, target = _response_logits(model, batch)
    total = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                              ignore_index=IGNORE, reduction="sum")
    return total, int((target != IGNORE).sum())


def sft_loss(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, examples: Sequence[InstructionExample]) -> torch.Tensor:
    """Mean cross-entropy over the batch's response tokens (prompt tokens are context only)."""
    total, count = token_losses(model, collate(tokenizer, [encode(tokenizer, e) for e in examples]))
    return total / max(count, 1)


def example_losses(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, examples: Sequence[InstructionExample]) -> torch.Tensor:
    """Each example's mean cross-entropy over its own response tokens (DP-SGD clips these one by one)."""
    logits, target = _response_logits(model, collate(tokenizer, [encode(tokenizer, e) for e in examples]))
    per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE, reduction="none")
    return per_token.sum(dim=1) / (target != IGNORE).sum(dim=1).clamp(min=1)


@torch.no_grad()
def greedy_replies(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, examples: Sequence[InstructionExample],
                   max_new_tokens: int) -> list[str]:
    """Each example's greedy reply of at most ``max_new_tokens`` tokens, up to the first special token."""
    device = next(model.parameters()).device
    prompts = [encode(tokenizer, e).prompt_ids for e in examples]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    stop = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in prompts]
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    past = None  # the key/value cache: each new token is one position's forward pass, not the whole sequence's
    for _ in range(max_new_tokens):
        result = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past, use_cache=True)
        nxt, past = result.logits[:, -1].argmax(dim=-1), result.past_key_values
        done |= torch.isin(nxt, stop)
        for i in torch.nonzero(~done).flatten().tolist():
            out[i].append(int(nxt[i]))
        if all_ranks(bool(done.all())):  # under ZeRO-3 every rank must run the same forward passes
            break
        ids, positions = nxt[:, None], positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    # transformers types decode as str | list[str]; one sequence of ids decodes to one str
    return [cast(str, tokenizer.decode(o, skip_special_tokens=True)) for o in out]


@torch.no_grad()
def evaluate_instruction(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, examples: Sequence[InstructionExample],
                         max_label_tokens: int = 8, batch_size: int = 16) -> Evaluation:
    """Mean response-token loss, its perplexity and token accuracy (teacher-forced argmax on response tokens); exact
    match (greedy decoding) as the headline when every response is at most ``max_label_tokens`` tokens, else token accuracy."""
    if not examples:
        raise ValueError("no examples to evaluate")
    was_training = model.training
    model.eval()
    try:
        total, count, correct = 0.0, 0, 0
        for i in range(0, len(examples), batch_size):
            logits, target = _response_logits(model, collate(tokenizer, [encode(tokenizer, e) for e in examples[i:i + batch_size]]))
            learned = target != IGNORE
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                             ignore_index=IGNORE, reduction="sum"))
            count += int(learned.sum())
            correct += int(((logits.argmax(dim=-1) == target) & learned).sum())
        loss = total / max(count, 1)
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "token_accuracy": correct / max(count, 1)}
        longest = max(label_tokens(tokenizer, e) for e in examples)
        if longest <= max_label_tokens:
            hits = 0
            for i in range(0, len(examples), batch_size):
                chunk = examples[i:i + batch_size]
                replies = greedy_replies(model, tokenizer, chunk, longest + 2)
                hits += sum(normalise(r) == normalise(e.response) for r, e in zip(replies, chunk, strict=False))
            metrics["exact_match"] = hits / len(examples)
            return Evaluation(metrics, "exact_match")
        return Evaluation(metrics, "token_accuracy")
    finally:
        model.train(was_training)


@dataclass
class InstructionWorkload(Workload[InstructionExample]):
    """Supervised fine-tuning on a silo's own JSONL files (see ``workloads.instruction`` for the layouts)."""

    name: ClassVar[str] = "instruction"
    columns: ClassVar[tuple[Column, ...]] = (
        Column("loss", "loss"), Column("perplexity", "ppl", ".2f"), Column("token_accuracy", "tok-acc", ".3f"),
        Column("exact_match", "EM", ".3f"),
    )
    loss_metric: ClassVar[str] = "loss"
    val_fraction: float = 0.1
    seed: int = 0
    max_label_tokens: int = 8
    eval_batch_size: int = 16

    def examples(self, path) -> Split[InstructionExample]:
        return load_split(path, self.val_fraction, self.seed)

    def check(self, model, tokenizer, examples) -> None:
        check_examples(model, tokenizer, examples)

    def loss(self, model, tokenizer, batch) -> torch.Tensor:
        return sft_loss(model, tokenizer, batch)

    def record_losses(self, model, tokenizer, batch) -> torch.Tensor:
        return example_losses(model, tokenizer, batch)

    def tokens(self, tokenizer, batch) -> int:
        return sum(len(encode(tokenizer, e).input_ids) for e in batch)

    def evaluate(self, model, tokenizer, examples) -> Evaluation:
        return evaluate_instruction(model, tokenizer, examples, self.max_label_tokens, self.eval_batch_size)
