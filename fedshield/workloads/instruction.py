"""Instruction data (supervised fine-tuning) from a user's JSONL files: parsing and refusal of bad data.

Each line is one JSON object in one of three layouts:

- ``{"prompt": ..., "response": ...}`` (optionally ``"system"``);
- alpaca: ``{"instruction": ..., "input": ..., "output": ...}`` (``input`` optional; it follows
  the instruction after a blank line);
- chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}``; the
  last message is the assistant's reply that is learned, the earlier ones are its context.

Any layout may carry a ``"user"`` string: whose example it is, for user-level DP-SGD.

Anything else is a ``DataError`` naming the file and the line: a file that is empty, bytes
that are not UTF-8, a line that is not JSON or not an object, a missing or non-text field.
The model-side checks (an example longer than the context) and the loss are in
``learning/instruction.py``.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .base import DataError, Split

ROLES = ("system", "user", "assistant")
VALIDATION_FILES = ("validation.jsonl", "val.jsonl")


@dataclass(frozen=True)
class Turn:
    role: str
    content: str


@dataclass(frozen=True)
class InstructionExample:
    """A conversation whose last turn (the assistant's) is learned; ``source``/``line`` say where it was read."""

    context: tuple[Turn, ...]
    response: str
    source: str = ""
    line: int = 0
    user: str = ""  # whose example it is ("" when the file does not say): the unit of user-level DP-SGD

    @property
    def prompt(self) -> str:
        """The context as plain text (for models without a chat template)."""
        return "\n\n".join(t.content for t in self.context if t.role != "system")

    @property
    def system(self) -> str | None:
        return next((t.content for t in self.context if t.role == "system"), None)

    @classmethod
    def of(cls, prompt: str, response: str, system: str | None = None, source: str = "", line: int = 0) -> InstructionExample:
        """A single user turn (after an optional system turn) and its response."""
        return cls(((Turn("system", system),) if system else ()) + (Turn("user", prompt),), response, source, line)


def _text(path: Path, line: int, record: dict, key: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise DataError(path, line, f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise DataError(path, line, f"field {key!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise DataError(path, line, f"field {key!r} is empty")
    return value


def _messages(path: Path, line: int, messages) -> InstructionExample:
    if not isinstance(messages, list) or not messages:
        raise DataError(path, line, "field 'messages' must be a non-empty list of {role, content}")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(path, line, f"messages[{i}] must be {{'role': one of {', '.join(ROLES)}, 'content': a string}}")
        turns.append(Turn(m["role"], m["content"]))
    if turns[-1].role != "assistant" or not turns[-1].content.strip():
        raise DataError(path, line, "the last message must be the assistant's reply (non-empty) to learn")
    if not any(t.role == "user" for t in turns[:-1]):
        raise DataError(path, line, "no user message before the assistant's reply")
    return InstructionExample(tuple(turns[:-1]), turns[-1].content, str(path), line)


def parse_record(path: Path, line: int, record) -> InstructionExample:
    """One JSON object in any of the three layouts (and its optional ``user``)."""
    if not isinstance(record, dict):
        raise DataError(path, line, f"expected a JSON object, got {type(record).__name__}")
    example = _parse_layout(path, line, record)
    user = _text(path, line, record, "user", required=False)
    return replace(example, user=user) if user else example


def _parse_layout(path: Path, line: int, record: dict) -> InstructionExample:
    if "messages" in record:
        return _messages(path, line, record["messages"])
    if "instruction" in record:
        instruction = _text(path, line, record, "instruction")
        extra = _text(path, line, record, "input", required=False)
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return InstructionExample.of(prompt, _text(path, line, record, "output"), source=str(path), line=line)
    if "prompt" in record or "response" in record:
        system = _text(path, line, record, "system", required=False) or None
        return InstructionExample.of(_text(path, line, record, "prompt"), _text(path, line, record, "response"), system,
                                     source=str(path), line=line)
    raise DataError(path, line, "missing field: expected 'prompt' + 'response', 'instruction' + 'output' (alpaca) "
                                f"or 'messages'; the object has {', '.join(sorted(record)) or 'no fields'}")


def read_jsonl(path: str | Path) -> list[InstructionExample]:
    """Every example in one JSONL file; blank lines are skipped, anything malformed is a ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    examples = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(path, number, f"not UTF-8 text ({exc.reason} at byte {exc.start} of the line)") from None
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(path, number, f"invalid JSON: {exc.msg} at column {exc.colno}") from None
            examples.append(parse_record(path, number, record))
    if not examples:
        raise DataError(path, None, "empty file: no examples")
    return examples


def data_files(path: str | Path) -> tuple[list[Path], list[Path]]:
    """(training files, validation files) in a silo's data path: a JSONL file, or a directory of them
    where ``validation.jsonl`` (or ``val.jsonl``) is the validation set."""
    path = Path(path)
    if path.is_file():
        return [path], []
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a JSONL file nor a directory")
    files = sorted(p for p in path.glob("*.jsonl") if p.is_file())
    val = [p for p in files if p.name in VALIDATION_FILES]
    train = [p for p in files if p.name not in VALIDATION_FILES]
    if not train:
        raise FileNotFoundError(f"{path} holds no training .jsonl file")
    return train, val


def load_split(path: str | Path, val_fraction: float = 0.1, seed: int = 0) -> Split[InstructionExample]:
    """A silo's examples: its validation file when it has one, else a seeded ``val_fraction`` of its examples."""
    train_files, val_files = data_files(path)
    train = [e for f in train_files for e in read_jsonl(f)]
    if val_files:
        return Split(train, [e for f in val_files for e in read_jsonl(f)])
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    n_val = int(round(len(train) * val_fraction)) if len(train) > 1 else 0
    held = set(order[:n_val])
    return Split([e for i, e in enumerate(train) if i not in held], [e for i, e in enumerate(train) if i in held])


def normalise(text: str) -> str:
    """For exact match: Unicode NFKC, lower case, white space collapsed, surrounding punctuation and quotes dropped."""
    text = re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).lower()).strip()
    return text.strip(" .,;:!?\"'`")


def write_jsonl(examples: Sequence[InstructionExample], path: str | Path) -> Path:
    """``examples`` as prompt/response JSONL (chat ``messages`` when a context has more than one user turn)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for e in examples:
            users = [t for t in e.context if t.role != "system"]
            record: Mapping[str, object]
            if len(users) == 1 and users[0].role == "user":
                record = {"prompt": e.prompt, "response": e.response} | ({"system": e.system} if e.system else {})
            else:
                record = {"messages": [{"role": t.role, "content": t.content} for t in e.context]
                          + [{"role": "assistant", "content": e.response}]}
            if e.user:
                record = dict(record, user=e.user)
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
