"""The one interface a workload implements, and the typed error for bad data files.

A workload says how a silo's files become train/validation examples, what the training
loss on a batch is for a model and tokenizer (and per example, for DP-SGD's clipping),
which metrics an evaluation reports (one of them the headline: a score in [0, 1], higher
is better, that silos report, the aggregator's fairness compares and the dashboard plots),
and which columns the round table and the report show. It is the
extension point for tasks, as Flower's ``Strategy`` is for aggregation: a new task is one
new class.

The interface and the data parsers live in ``workloads/`` (no model code); the
implementations that touch a model live in ``learning/`` (``learning/workloads.py`` holds
the registry by name), because ``learning/`` already builds on ``workloads/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

E = TypeVar("E")


class DataError(ValueError):
    """A data file the workload refuses: which file, which line (1-based; None for the whole file), and why."""

    def __init__(self, path: str | Path, line: int | None, reason: str):
        self.path, self.line, self.reason = Path(path), line, reason
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class Column:
    """One column of the round table and the report: a metric's key, its header, its format."""

    key: str
    header: str
    fmt: str = ".4f"

    def render(self, metrics: dict[str, float]) -> str:
        value = metrics.get(self.key)
        return "-" if value is None else format(value, self.fmt)


@dataclass(frozen=True)
class Evaluation:
    """Metrics by name, with the headline one named: a score in [0, 1] where higher is better."""

    metrics: dict[str, float]
    headline: str

    def __post_init__(self) -> None:
        if self.headline not in self.metrics:
            raise ValueError(f"headline metric {self.headline!r} is not among {sorted(self.metrics)}")
        if not 0.0 <= self.metrics[self.headline] <= 1.0:
            raise ValueError(f"headline metric {self.headline!r} must be a score in [0, 1], got {self.metrics[self.headline]}")

    @property
    def score(self) -> float:
        return self.metrics[self.headline]


@dataclass(frozen=True)
class Split(Generic[E]):
    """A silo's examples: what it trains on and what it validates on (disjoint)."""

    train: list[E]
    validation: list[E] = field(default_factory=list)


class Workload(ABC, Generic[E]):
    """A task a federation fine-tunes for. ``E`` is its example type."""

    name: ClassVar[str]
    columns: ClassVar[tuple[Column, ...]]
    loss_metric: ClassVar[str]  # which of the evaluation's metrics is the validation loss

    @abstractmethod
    def examples(self, path: str | Path) -> Split[E]:
        """Train and validation examples from a silo's files; bad data raises ``DataError`` naming file and line."""

    @abstractmethod
    def check(self, model: Any, tokenizer: Any, examples: Sequence[E]) -> None:
        """Refuse (``DataError``/``ValueError``) any example the model cannot take, before the first step."""

    @abstractmethod
    def loss(self, model: Any, tokenizer: Any, batch: Sequence[E]) -> Any:
        """The training loss (a scalar tensor with a gradient) of ``model`` on ``batch``."""

    @abstractmethod
    def record_losses(self, model: Any, tokenizer: Any, batch: Sequence[E]) -> Any:
        """Each example's own loss (a tensor of ``len(batch)``): what DP-SGD clips per record or user."""

    @abstractmethod
    def tokens(self, tokenizer: Any, batch: Sequence[E]) -> int:
        """Tokens the model reads to train on ``batch`` (padding excluded): the throughput metrics count these."""

    @abstractmethod
    def evaluate(self, model: Any, tokenizer: Any, examples: Sequence[E]) -> Evaluation:
        """Metrics of ``model`` on ``examples`` (no gradient, the model's training mode restored)."""
