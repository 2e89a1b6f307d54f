"""How many ciphertexts a sum may hold before CKKS noise breaks integer rounding.

A decrypted slot is the exact integer sum plus noise. Measured at N=8192, scale 2**18 (one fresh
public-key encryption per silo, summed): the largest |noise| over one ciphertext's 4096 slots is
about 0.13 integer units for 16 ciphertexts, 0.27 for 64 and 0.49 for 256, i.e. ``0.031 * sqrt(n)``
(``benchmarks`` and ``tests/aggregator/test_aggregator_trust.py`` re-measure it). Rounding is exact while the
noise stays under 0.5; we keep a factor 2 of margin (the tail over millions of slots, and other
polynomial degrees), so the budget is ``NOISE_PER_SQRT_SUM * sqrt(n) * 2**(18 - scale_bits) <= 0.25``.
Each extra bit of scale halves the noise and so quadruples the silos allowed.
"""

from __future__ import annotations

import math

NOISE_PER_SQRT_SUM = 0.033  # largest |noise| (integer units) of a sum of n fresh ciphertexts at scale 2**18, / sqrt(n)
REFERENCE_SCALE_BITS = 18
NOISE_BUDGET = 0.25  # half of the 0.5 at which rounding to the nearest integer goes wrong


def expected_noise(scale_bits: int, summed: int) -> float:
    """Largest |noise| in integer units expected in a sum of ``summed`` fresh ciphertexts."""
    return NOISE_PER_SQRT_SUM * math.sqrt(max(summed, 1)) * 2.0 ** (REFERENCE_SCALE_BITS - scale_bits)


def max_summable(scale_bits: int) -> int:
    """The most ciphertexts a sum may hold at this scale with integer rounding still exact (with margin)."""
    return int((NOISE_BUDGET / (NOISE_PER_SQRT_SUM * 2.0 ** (REFERENCE_SCALE_BITS - scale_bits))) ** 2)


def check_noise_budget(scale_bits: int, max_silos: int) -> None:
    """Refuse a scale too small for ``max_silos`` summed uploads (raises ValueError naming both)."""
    if max_silos > max_summable(scale_bits):
        need = next(s for s in range(scale_bits, 61) if max_summable(s) >= max_silos)
        raise ValueError(f"max_silos={max_silos} summed uploads need scale_bits >= {need}: at scale_bits={scale_bits} CKKS noise "
                         f"reaches {expected_noise(scale_bits, max_silos):.2f} integer units (at most {max_summable(scale_bits)} "
                         f"uploads stay under {NOISE_BUDGET})")
