"""DP-LoRA at the silo: clip the shared update, add Gaussian noise, account with an RDP accountant.

What it gives (docs/privacy.md): each round a silo releases ``clip(u, C) + N(0, sigma^2 C^2 I)``,
a Gaussian mechanism with L2 sensitivity C with respect to everything the silo's data
contributed that round (silo-level DP under add/remove adjacency). Every silo takes part
in every round (no subsampling), so T rounds compose T Gaussian mechanisms; the RDP
accountant of Google's ``dp-accounting`` turns that into (epsilon, delta). The error-feedback
residual is taken from the privatised vector, so later rounds only post-process released values.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from functools import lru_cache

import dp_accounting
import numpy as np
from dp_accounting import rdp

from .updates.feedback import compensate


def clip(update: np.ndarray, clip_norm: float) -> np.ndarray:
    """Scale ``update`` down to L2 norm ``clip_norm`` if it is longer."""
    norm = float(np.linalg.norm(update))
    return update * min(1.0, clip_norm / norm) if norm > 0 else update.copy()


def privatise(update: np.ndarray, clip_norm: float, noise_multiplier: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """The Gaussian mechanism on the clipped update (noise from OS entropy unless ``rng`` is given)."""
    rng = rng or np.random.default_rng(secrets.randbits(128))
    return clip(update, clip_norm) + rng.normal(0.0, noise_multiplier * clip_norm, size=update.shape)


def release(delta: np.ndarray, residual: np.ndarray | None, budget: "Budget | None",
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
