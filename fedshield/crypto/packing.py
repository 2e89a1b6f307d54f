"""Quantise update values to integers and pack several into one CKKS slot (pure numpy).

A slot holds ``V = sum_j d_j * R**j`` with signed digits ``|d_j| < R/2``. Adding
slots adds digits independently as long as no digit sum reaches ``R/2``, which
``PackingParams.levels`` guarantees for up to ``max_silos`` uploads whose weights
sum to at most 1.
"""

from __future__ import annotations

import numpy as np


def quantise(values: np.ndarray, weight: float, bound: float, step: float,
             rng: np.random.Generator | None = None) -> np.ndarray:
    """Integers ``round(weight * clip(values, ±bound) / step)``, as int64.

    With ``rng`` the rounding is stochastic: ``x`` becomes ``floor(x)`` or ``floor(x) + 1``
    with the probabilities that make it unbiased. Either way ``|result| <= ceil(weight *
    bound / step)``, so the digit-sum bound of :class:`~fedshield.crypto.params.PackingParams`
    holds for both.
    """
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"aggregation weight must be in (0, 1], got {weight}")
    clipped = np.clip(np.asarray(values, dtype=np.float64), -bound, bound)
    scaled = clipped * (weight / step)
    if rng is None:
        return np.rint(scaled).astype(np.int64)
    return np.floor(scaled + rng.random(scaled.shape)).astype(np.int64)


def dequantise(ints: np.ndarray, weight: float, step: float) -> np.ndarray:
    """The values that the integers stand for, before weighting (float64)."""
    return ints.astype(np.float64) * (step / weight)


def pack(ints: np.ndarray, digits: int, radix: int, slots: int) -> np.ndarray:
    """Pack integers into float64 slot values, padded to a whole number of ciphertexts.

    Value ``i`` is digit ``i % digits`` of slot ``i // digits``. Returns an array of
    shape ``(n_ciphertexts, slots)``.
    """
    per_ct = digits * slots
    n_ct = max(1, -(-len(ints) // per_ct))
    padded = np.zeros(n_ct * per_ct, dtype=np.int64)
    padded[: len(ints)] = ints
    grouped = padded.reshape(-1, digits)
    powers = radix ** np.arange(digits, dtype=np.int64)
    return (grouped @ powers).astype(np.float64).reshape(n_ct, slots)


def unpack(slot_values: np.ndarray, digits: int, radix: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack` on (summed) decrypted slot values: the first ``count`` integers."""
    rest = np.rint(np.asarray(slot_values, dtype=np.float64).ravel()).astype(np.int64)
    half = radix // 2
    out = np.empty((rest.size, digits), dtype=np.int64)
    for j in range(digits - 1):
        digit = (rest + half) % radix - half
        out[:, j] = digit
        rest = (rest - digit) // radix
    out[:, digits - 1] = rest
    return out.ravel()[:count]
