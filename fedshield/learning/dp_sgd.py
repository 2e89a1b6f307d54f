"""Record- and user-level DP-SGD for a silo's LoRA training (DP-LoRA: noise on clipped gradients at every step).

Each step samples a Poisson batch of *units* (records, or users with all their records), takes
per-record gradients of the trainable (LoRA) parameters with Opacus' grad samplers, sums them
per unit, clips each unit's gradient to L2 norm ``clip_norm`` over all parameters together,
adds ``N(0, (noise_multiplier * clip_norm)^2)`` to the sum and divides by the expected batch
size ``sampling_rate * units``. The noisy mean replaces the parameters' gradients before the
DeepSpeed engine's optimizer step. Everything the silo later releases (its update, encrypted,
pruned, error-fed) is a post-processing of this run; the accountant is in ``fedshield.privacy``.

Why Opacus' ``GradSampleModule`` and not ``PrivacyEngine``: the engine owns the optimizer
(DeepSpeed's), so only the per-sample gradient hooks are taken from Opacus and the clipping,
noise and Poisson sampling are the few lines below, where the unit (record or user) is chosen.
The DeepSpeed engine runs with ZeRO stage 0 (gradients stay whole on the one process) and no
gradient clipping of its own.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..config import FederationConfig
from ..privacy import DpSgdBudget, default_sampling_rate, noise_for_dp_sgd

Unit = Literal["record", "user"]


@dataclass(frozen=True)
class DpSgd:
    """What one silo's DP-SGD run uses (derived from the federation's privacy settings)."""

    clip_norm: float
    noise_multiplier: float
    sampling_rate: float
    unit: Unit = "record"

    def __post_init__(self) -> None:
        if not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0, got {self.clip_norm}")
        if self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if not 0 < self.sampling_rate <= 1:
            raise ValueError(f"sampling_rate must be in (0, 1], got {self.sampling_rate}")


def unit_ids(users: Sequence[str], unit: Unit) -> list[int]:
    """Each record's unit index: its own position (record level) or its user's index (user level)."""
    if unit == "record":
        return list(range(len(users)))
    if any(not u for u in users):
        raise ValueError("user-level DP needs every record's user id; some records have none")
    index: dict[str, int] = {}
    return [index.setdefault(u, len(index)) for u in users]


def poisson_units(n_units: int, rate: float, rng: random.Random) -> list[int]:
    """Poisson sampling: every unit is in the batch independently with probability ``rate``."""
    return [u for u in range(n_units) if rng.random() < rate]


def privatised_gradient(
    grad_samples: Sequence[torch.Tensor], units: torch.Tensor, n_units: int, params: DpSgd, expected_units: float,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """The noisy mean gradient from per-record gradients.

    ``grad_samples[j]`` has shape ``[records, *param_j.shape]``; ``units[r]`` is record ``r``'s
    unit in ``0..n_units-1``. Per-unit gradients are summed over their records, clipped jointly
    over all parameters, summed, noised and divided by ``expected_units``.
    """
    per_unit = [torch.zeros((n_units, *g.shape[1:]), dtype=torch.float32).index_add_(0, units, g.float()) for g in grad_samples]
    norms = torch.sqrt(sum(((g.flatten(1) ** 2).sum(dim=1) for g in per_unit), torch.zeros(n_units))) if per_unit else torch.zeros(n_units)
    factors = torch.clamp(params.clip_norm / (norms + 1e-12), max=1.0)
    out = []
    for g in per_unit:
        total = torch.einsum("u,u...->...", factors, g)
        noise = torch.normal(0.0, params.noise_multiplier * params.clip_norm, size=total.shape, generator=generator)
        out.append((total + noise) / expected_units)
    return out


def noise_only(shapes: Sequence[torch.Size], params: DpSgd, expected_units: float,
               generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """The gradient of an empty Poisson batch: the noise alone (the step still happens, as the accountant assumes)."""
    return [torch.normal(0.0, params.noise_multiplier * params.clip_norm, size=tuple(s), generator=generator) / expected_units
            for s in shapes]


def secure_generator() -> torch.Generator:
    """A generator seeded from OS entropy: DP noise must not be reproducible by anyone who knows a seed."""
    import secrets

    return torch.Generator().manual_seed(secrets.randbits(63))


@dataclass
class DpStep:
    loss: float  # mean per-record loss of the sampled batch (nan when the batch was empty)
    records: int  # records in the sampled batch


def dp_sgd_step(
    engine: Any, trainable: Sequence[torch.nn.Parameter], per_record_loss: Callable[[Sequence[int]], torch.Tensor],
    records: Sequence[int], record_units: Sequence[int], n_units: int, params: DpSgd,
    generator: torch.Generator | None = None, micro_batch: int = 16,
) -> DpStep:
    """One DP-SGD optimiser step of ``engine`` on the sampled ``records``.

    ``per_record_loss(idx)`` runs the forward pass through the engine (whose module is an
    Opacus ``GradSampleModule``) and returns one loss per record in ``idx``. The batch is
    processed in micro-batches; the per-record gradients are collected, privatised and put
    in the parameters' ``.grad`` for ``engine.step()``.
    """
    expected = params.sampling_rate * n_units
    samples: list[list[torch.Tensor]] = [[] for _ in trainable]
    losses: list[float] = []
    for start in range(0, len(records), micro_batch):
        chunk = list(records[start : start + micro_batch])
        loss = per_record_loss(chunk)
        losses.extend(float(x) for x in loss.detach())
        engine.backward(loss.sum())  # DeepSpeed owns backward; its gradient accumulation is 1, so no scaling
        for j, p in enumerate(trainable):
            samples[j].append(p.grad_sample.detach().clone())  # type: ignore[attr-defined]
            p.grad_sample = None  # type: ignore[attr-defined]
    if records:
        units = torch.tensor([record_units[r] for r in records], dtype=torch.long)
        grads = privatised_gradient([torch.cat(s) for s in samples], units, n_units, params, expected, generator)
    else:
        grads = noise_only([p.shape for p in trainable], params, expected, generator)
    for p, g in zip(trainable, grads, strict=True):
        p.grad = g.to(dtype=p.dtype, device=p.device)
    engine.step()
    engine.zero_grad()
    return DpStep(float(np.mean(losses)) if losses else float("nan"), len(records))


def sample_records(record_units: Sequence[int], n_units: int, rate: float, rng: random.Random) -> list[int]:
    """The records of the Poisson-sampled units."""
    chosen = set(poisson_units(n_units, rate, rng))
    return [r for r, u in enumerate(record_units) if u in chosen]


def silo_dp_sgd(config: FederationConfig, silo: str, users: Sequence[str]) -> tuple[DpSgd, DpSgdBudget] | None:
    """One silo's DP-SGD run from the spec (None unless ``privacy.dp`` is on at record or user level).

    ``users`` are the silo's training records' users. The sampling rate is the spec's or
    ``default_sampling_rate`` (``4 * batchSize / units``, at most 1); sigma is the spec's or solved for ``targetEpsilon`` over every
    planned step (``rounds * localSteps``) with the PLD accountant.
    """
    dp = config.privacy.dp
    if not dp.enabled or dp.unit == "silo":
        return None
    if config.training.zero_stage != 0:
        raise ValueError(f"privacy.dp.unit {dp.unit} (DP-SGD) needs training.zeroStage 0, got {config.training.zero_stage}")
    unit: Unit = "user" if dp.unit == "user" else "record"
    units = max(unit_ids(users, unit), default=-1) + 1
    if units == 0:
        raise ValueError(f"silo {silo!r} has no training records to protect")
    rate = dp.sampling_rate or default_sampling_rate(config.training.batch_size, units)
    steps = config.rounds * config.training.local_steps
    sigma = dp.noise_multiplier or noise_for_dp_sgd(float(dp.target_epsilon or 0.0), rate, steps, dp.delta)
    return (DpSgd(clip_norm=dp.clip_norm, noise_multiplier=sigma, sampling_rate=rate, unit=unit),
            DpSgdBudget(rate, sigma, dp.delta, config.epsilon_budget_of(silo)))
