"""95% confidence intervals of a mean over seeds (Student's t), shared by the benchmarks that report several seeds."""

from __future__ import annotations

import numpy as np
from scipy import stats


def ci95(values: list[float], digits: int | None = 4) -> list[float]:
    """[lo, hi] of the t-interval of the mean; one value gives [v, v] (no spread to estimate), none gives NaNs."""
    if len(values) < 2:
        return [values[0], values[0]] if values else [float("nan")] * 2
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    lo, hi = float(np.mean(values) - half), float(np.mean(values) + half)
    return [lo, hi] if digits is None else [round(lo, digits), round(hi, digits)]
