"""Aggregation weights, learning-rate scales and fairness indices (pure functions).

Under encryption the aggregator cannot compare silos' parameters (PPLR's cosine
similarity), so dynamic balance uses what silos report in plaintext anyway: their
validation loss. Two rules, both documented in docs/fairness.md:

- weights, q-FFL style (Li et al., 2020): ``a_i ∝ n_i * L_i^q``; silos doing worse
  count more in the global update (q = 0 is FedAvg);
- learning-rate scales, PPLR's learning-speed idea turned around for one global model:
  a lagging silo (loss above the mean) trains faster locally,
  ``s_i = clip((L_i / mean L)^gamma, lo, hi)``;
- PPLR's own learning-speed rule, in the paper's direction (``warmup_weights``): a struggling
  silo mixes little of the others into its own parameters early (``personalised_mix``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

# Validation losses outside this range are refused at upload; the plan clamps again, so no float can break it.
LOSS_FLOOR, LOSS_CEILING = 1e-8, 1e4


def _clean_losses(losses: Mapping[str, float | None]) -> dict[str, float]:
    """The finite losses, clamped to [LOSS_FLOOR, LOSS_CEILING]."""
    return {n: min(max(float(v), LOSS_FLOOR), LOSS_CEILING) for n, v in losses.items()
            if v is not None and math.isfinite(float(v))}


def _normalise(raw: Mapping[str, float]) -> dict[str, float]:
    """Shares of ``raw`` (finite, non-negative); equal shares when they cannot be formed."""
    total = math.fsum(raw.values())
    if not raw:
        return {}
    if not math.isfinite(total) or total <= 0 or not all(math.isfinite(v) and v >= 0 for v in raw.values()):
        return {name: 1.0 / len(raw) for name in sorted(raw)}
    return {name: raw[name] / total for name in sorted(raw)}


def cap_weights(weights: Mapping[str, float], cap: float) -> dict[str, float]:
    """Clip each weight at ``cap`` and share the excess among the others in proportion (water-filling).

    A cap below 1/n cannot be met by weights summing to 1; it is raised to 1/n (equal weights).
    """
    weights = _normalise(weights)
    if not weights:
        return {}
    cap = max(cap, 1.0 / len(weights))
    fixed: dict[str, float] = {}
    while True:
        free = {n: w for n, w in weights.items() if n not in fixed}
        room = 1.0 - cap * len(fixed)
        shares = _normalise(free)
        over = [n for n, share in shares.items() if share * room > cap * (1 + 1e-12)]
        if not over:
            out = {**{n: cap for n in fixed}, **{n: share * room for n, share in shares.items()}}
            return {n: out[n] for n in sorted(out)}
        fixed.update({n: cap for n in over})


def fedavg_weights(samples: Mapping[str, int], cap: float = 1.0) -> dict[str, float]:
    """Sample shares, capped at ``cap``."""
    return cap_weights({name: float(n) for name, n in samples.items()}, cap)


def loss_weights(samples: Mapping[str, int], losses: Mapping[str, float | None], q: float = 1.0, cap: float = 1.0) -> dict[str, float]:
    """q-FFL-style weights ``n_i * L_i^q``, normalised and capped; silos without a loss get the mean loss.

    Computed in log space from clamped losses: finite for any input (no overflow for q > 1).
    """
    known = _clean_losses(losses)
    fallback = float(np.mean(list(known.values()))) if known else 1.0
    try:
        raw = {name: float(n) * known.get(name, fallback) ** q for name, n in samples.items()}
    except OverflowError:
        raw = {}
    if raw and all(math.isfinite(v) and v > 0 for v in raw.values()) and math.isfinite(math.fsum(raw.values())):
        return cap_weights(raw, cap)
    logs = {name: math.log(max(float(n), 1.0)) + q * math.log(known.get(name, fallback)) for name, n in samples.items()}
    top = max(logs.values(), default=0.0)
    return cap_weights({name: math.exp(v - top) for name, v in logs.items()}, cap)


def lr_scales(losses: Mapping[str, float | None], names: list[str], gamma: float = 1.0, lo: float = 0.5, hi: float = 2.0) -> dict[str, float]:
    """Per-silo learning-rate multipliers: above-average loss learns faster (1.0 without losses)."""
    known = _clean_losses(losses)
    if not known:
        return {name: 1.0 for name in names}
    mean = float(np.mean(list(known.values())))
    out = {}
    for name in names:
        log_ratio = gamma * (math.log(known.get(name, mean)) - math.log(mean))
        out[name] = float(np.clip(math.exp(min(max(log_ratio, math.log(lo)), math.log(hi))), lo, hi))
    return out


def warmup_weights(losses: Mapping[str, float | None], round: int, alpha: float = 0.7, beta: float = 1.0,
                   temperature: float = 0.05) -> dict[str, float]:
    """PPLR's learning-speed ("warm-up") weights: ``w_i = tanh(alpha / l_i^((t+1)/beta))`` with
    ``l = softmax(loss / temperature)`` over the silos' last losses.

    A struggling silo (high loss, large ``l_i``) gets a small ``w_i`` early and learns mostly
    from itself; every ``w_i`` tends to 1 as rounds pass (``l_i < 1``). Silos without a loss get
    the mean loss. Plaintext losses only, so a silo can apply it to its own mix under encryption.

    Computed in log space (``log l_i = z_i - logsumexp(z)``, ``w_i = tanh(exp(log alpha - p log l_i))``):
    finite and in [tanh(alpha), 1] for any temperature, loss and round (no overflow, no 0 ** p).
    """
    known = _clean_losses(losses)
    if not known:
        return {}
    if not (alpha > 0 and beta > 0 and temperature > 0 and round >= 0):
        raise ValueError("warm-up weights need alpha, beta and temperature > 0 and round >= 0")
    fallback = float(np.mean(list(known.values())))
    names = sorted(losses)
    z = np.array([known.get(n, fallback) for n in names], dtype=np.float64) / temperature
    top = float(z.max())
    log_soft = (z - top) - math.log(float(np.exp(z - top).sum()))  # <= 0: log of the softmax
    power = (round + 1) / beta
    # tanh(exp(50)) is 1 in float64: clip -log l before multiplying so that the product cannot overflow
    exponent = np.minimum(math.log(alpha) + power * np.minimum(-log_soft, 50.0 / power), 50.0)
    return {n: float(np.tanh(np.exp(e))) for n, e in zip(names, exponent, strict=True)}


def round_warmup_weights(losses: Mapping[str, float | None], names: Sequence[str], round: int, alpha: float = 0.7,
                         beta: float = 1.0, temperature: float = 0.05) -> dict[str, float]:
    """Every silo's warm-up weight for ``round`` from the losses of closed rounds; none known yet (round 0): equal losses."""
    if not names:
        return {}
    known = {n: losses.get(n) for n in names}
    if not _clean_losses(known):
        known = {n: 1.0 for n in names}
    return warmup_weights(known, round, alpha=alpha, beta=beta, temperature=temperature)


def personalised_mix(own: np.ndarray, global_mean: np.ndarray, weight: float, silos: int) -> np.ndarray:
    """PPLR's personalised aggregate at one silo, with every similarity 1 (HE hides the others' parameters):
    ``theta_i <- (theta_i + w_i * sum_{j != i} theta_j) / (1 + w_i (n - 1))``, the others' sum taken from the
    global mean as ``n * mean - theta_i``. ``weight`` 1 gives the global mean; 0 keeps the silo's own."""
    if silos < 1:
        raise ValueError("a federation has at least one silo")
    others = silos * global_mean - own
    return (own + weight * others) / (1.0 + weight * (silos - 1))


def jain_index(values: list[float]) -> float:
    """(sum x)^2 / (n sum x^2): 1 when all equal, 1/n when one silo has everything."""
    x = np.asarray(values, dtype=np.float64)
    return float(x.sum() ** 2 / (len(x) * (x**2).sum())) if len(x) and (x**2).sum() > 0 else 1.0


def fairness_indices(metric: Mapping[str, float]) -> dict:
    """Jain's index, variance, max-min gap and worst silo of a per-silo metric (higher is better)."""
    names = sorted(metric)
    values = [metric[n] for n in names]
    worst = names[int(np.argmin(values))]
    return {"mean": float(np.mean(values)), "jain": jain_index(values), "variance": float(np.var(values)),
            "gap": float(max(values) - min(values)), "worst_silo": worst, "worst": float(min(values))}
