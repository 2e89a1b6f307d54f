"""DP-LoRA at the silo: silo-level DP on the released update, and the accountant of record-/user-level DP-SGD.

What it gives (docs/privacy.md): each round a silo releases ``clip(u, C) + N(0, sigma^2 C^2 I)``,
a Gaussian mechanism with L2 sensitivity C with respect to everything the silo's data
contributed that round (silo-level DP under add/remove adjacency). Every silo takes part
in every round (no subsampling), so T rounds compose T Gaussian mechanisms; the RDP
accountant of Google's ``dp-accounting`` turns that into (epsilon, delta). The error-feedback
residual is taken from the privatised vector, so later rounds only post-process released values.

Record- or user-level DP-SGD (``fedshield.learning.dp_sgd``) protects the people inside a silo
instead: every training step is a Poisson-subsampled Gaussian mechanism, composed over every
step of every round with dp-accounting's PLD accountant (RDP as a cross-check).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp

from .updates.feedback import compensate


def clip(update: np.ndarray, clip_norm: float) -> np.ndarray:
    """Scale ``update`` down to L2 norm ``clip_norm`` if it is longer."""
    norm = float(np.linalg.norm(update))
    return update * min(1.0, clip_norm / norm) if norm > 0 else update.copy()


def privatise(update: np.ndarray, clip_norm: float, noise_multiplier: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """The Gaussian mechanism on the clipped update (noise from OS entropy unless ``rng`` is given)."""
    rng = rng or np.random.default_rng(secrets.randbits(128))
    return clip(update, clip_norm) + rng.normal(0.0, noise_multiplier * clip_norm, size=update.shape)


def release(delta: np.ndarray, residual: np.ndarray | None, budget: Budget | None,
            rng: np.random.Generator | None = None) -> np.ndarray:
    """The vector a silo's upload is taken from this round (before the mask and quantisation).

    Under DP the round's own ``delta`` is clipped and noised first, then the error-feedback
    residual is added. The residual is itself a function of earlier released vectors only
    (what they held that was not sent), so adding it is post-processing: the release of
    each round stays one Gaussian mechanism on that round's data. Clipping ``delta +
    residual`` instead would scale every fresh delta down by the residual's accumulated
    noise, whose norm is many times ``C``.
    """
    if budget is not None:
        delta = privatise(delta, budget.clip_norm, budget.noise_multiplier, rng)
    return compensate(delta, residual)


def _event(noise_multiplier: float, rounds: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier), rounds)


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Epsilon spent after ``rounds`` Gaussian releases with this noise multiplier (RDP accountant)."""
    if rounds <= 0:
        return 0.0
    accountant = rdp.RdpAccountant()
    accountant.compose(_event(noise_multiplier, rounds))
    return float(accountant.get_epsilon(delta))


@lru_cache(maxsize=64)
def noise_for_epsilon(target_epsilon: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier that keeps ``rounds`` releases within ``target_epsilon``."""
    return float(dp_accounting.calibrate_dp_mechanism(
        rdp.RdpAccountant, lambda sigma: _event(sigma, rounds), target_epsilon, delta,
        bracket_interval=dp_accounting.ExplicitBracketInterval(0.05, 500.0),
    ))


@dataclass(frozen=True)
class Budget:
    """A silo's DP settings and how much it may spend."""

    clip_norm: float
    noise_multiplier: float
    delta: float
    epsilon_budget: float

    def spent(self, rounds: int) -> float:
        return epsilon(self.noise_multiplier, rounds, self.delta)

    def allows(self, rounds: int) -> bool:
        """Whether contributing ``rounds`` times in total stays within the budget."""
        return self.spent(rounds) <= self.epsilon_budget + 1e-9


# --- DP-SGD inside a silo (record or user level; fedshield.learning.dp_sgd) -----------------------

Accountant = Literal["pld", "rdp"]  # PLD: the reported epsilon; RDP: a valid, slightly looser cross-check

BATCHES_PER_SAMPLE = 4  # the default DP-SGD expected batch, in plain batches (docs/privacy.md)


def default_sampling_rate(batch_size: int, units: int) -> float:
    """DP-SGD's Poisson sampling rate when ``privacy.dp.samplingRate`` is unset: ``4 * batchSize / units``, at most 1.

    The noise on the mean gradient is ``sigma * C / (q * units)`` while sigma for a fixed epsilon
    grows more slowly than q, so an expected batch of four plain batches buys signal-to-noise
    for a per-step cost of four batches (docs/privacy.md).
    """
    if batch_size < 1 or units < 1:
        raise ValueError(f"batch_size and units must be >= 1, got {batch_size} and {units}")
    return min(1.0, BATCHES_PER_SAMPLE * batch_size / units)


def dp_sgd_event(sampling_rate: float, noise_multiplier: float, steps: int) -> dp_accounting.DpEvent:
    """``steps`` Poisson-subsampled Gaussian mechanisms (every step of every round the silo trains in)."""
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), steps)


def _accountant(kind: Accountant) -> dp_accounting.PrivacyAccountant:
    if kind == "pld":
        return pld.PLDAccountant()
    if kind == "rdp":
        return rdp.RdpAccountant()
    raise ValueError(f"unknown accountant {kind!r} (pld or rdp)")


@lru_cache(maxsize=1024)  # the silo asks for the same (q, sigma, steps) several times a round; PLD costs ~1.5 s
def dp_sgd_epsilon(sampling_rate: float, noise_multiplier: float, steps: int, delta: float, accountant: Accountant = "pld") -> float:
    """Epsilon after ``steps`` DP-SGD steps at this sampling rate and noise multiplier."""
    if steps <= 0:
        return 0.0
    acc = _accountant(accountant)
    acc.compose(dp_sgd_event(sampling_rate, noise_multiplier, steps))
    return float(acc.get_epsilon(delta))


@lru_cache(maxsize=256)
def noise_for_dp_sgd(target_epsilon: float, sampling_rate: float, steps: int, delta: float) -> float:
    """The smallest noise multiplier (within 0.5%) that keeps ``steps`` DP-SGD steps within ``target_epsilon``.

    The RDP accountant (fast, valid, a few percent loose) gives an upper bound on the noise
    needed; the PLD accountant then searches below it, so few PLD evaluations are made.
    """
    def event(sigma: float) -> dp_accounting.DpEvent:
        return dp_sgd_event(sampling_rate, sigma, steps)

    upper = float(dp_accounting.calibrate_dp_mechanism(
        rdp.RdpAccountant, event, target_epsilon, delta, bracket_interval=dp_accounting.ExplicitBracketInterval(0.1, 500.0)))
    return float(dp_accounting.calibrate_dp_mechanism(
        pld.PLDAccountant, event, target_epsilon, delta,
        bracket_interval=dp_accounting.ExplicitBracketInterval(0.5 * upper, upper * 1.001), tol=0.005 * upper))


@dataclass(frozen=True)
class DpSgdBudget:
    """A silo's DP-SGD settings and the epsilon it may spend over the whole run."""

    sampling_rate: float
    noise_multiplier: float
    delta: float
    epsilon_budget: float

    def spent(self, steps: int) -> float:
        return dp_sgd_epsilon(self.sampling_rate, self.noise_multiplier, steps, self.delta)

    def allows(self, steps: int) -> bool:
        """Whether ``steps`` DP-SGD steps in total stay within the budget."""
        return self.spent(steps) <= self.epsilon_budget + 1e-9

    def steps_within(self, done: int, wanted: int) -> int:
        """How many of ``wanted`` further steps (after ``done``) keep the total within the budget.

        Epsilon grows with the steps, so a binary search finds the last allowed step: a silo
        trains that many and stops before the step that would exceed its budget.
        """
        lo, hi = 0, wanted
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.allows(done + mid):
                lo = mid
            else:
                hi = mid - 1
        return lo
