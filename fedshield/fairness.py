"""Aggregation weights, learning-rate scales and fairness indices (pure functions).

Under encryption the aggregator cannot compare silos' parameters (PPLR's cosine
similarity), so dynamic balance uses what silos report in plaintext anyway: their
validation loss. Two rules, both documented in docs/fairness.md:

- weights, q-FFL style (Li et al., 2020): ``a_i ∝ n_i * L_i^q``; silos doing worse
  count more in the global update (q = 0 is FedAvg);
- learning-rate scales, PPLR's learning-speed idea turned around for one global model:
  a lagging silo (loss above the mean) trains faster locally,
  ``s_i = clip((L_i / mean L)^gamma, lo, hi)``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


def fedavg_weights(samples: Mapping[str, int]) -> dict[str, float]:
    total = sum(samples.values())
    return {name: n / total for name, n in sorted(samples.items())}


def loss_weights(samples: Mapping[str, int], losses: Mapping[str, float], q: float = 1.0) -> dict[str, float]:
    """q-FFL-style weights ``n_i * L_i^q``, normalised; silos without a loss get the mean loss."""
    known = [l for l in losses.values() if l is not None and np.isfinite(l)]
    fallback = float(np.mean(known)) if known else 1.0
    raw = {name: n * max(losses.get(name) if losses.get(name) is not None else fallback, 1e-8) ** q for name, n in samples.items()}
    total = sum(raw.values())
    return {name: v / total for name, v in sorted(raw.items())}


def lr_scales(losses: Mapping[str, float], names: list[str], gamma: float = 1.0, lo: float = 0.5, hi: float = 2.0) -> dict[str, float]:
    """Per-silo learning-rate multipliers: above-average loss learns faster (1.0 without losses)."""
    known = {n: l for n, l in losses.items() if l is not None and np.isfinite(l)}
    if not known:
        return {name: 1.0 for name in names}
    mean = float(np.mean(list(known.values())))
    return {name: float(np.clip((known.get(name, mean) / mean) ** gamma, lo, hi)) for name in names}


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
