"""Error feedback: what the mask, clipping or quantisation dropped is sent later.

With ``u = delta + residual`` the silo sends ``sent ~ u[mask]`` and keeps
``residual' = u - scatter(sent)``. Over any number of rounds the mass is conserved:
``sum(scattered sent) + residual == sum(delta)``.
"""

from __future__ import annotations

import numpy as np


def compensate(delta: np.ndarray, residual: np.ndarray | None) -> np.ndarray:
    """The update to send from: this round's delta plus what earlier rounds held back."""
    return delta.copy() if residual is None else delta + residual


def next_residual(compensated: np.ndarray, mask: np.ndarray, sent: np.ndarray) -> np.ndarray:
    """What stays behind: everything outside the mask, and the unsent part inside it."""
    residual = compensated.copy()
    residual[mask] -= sent
    return residual


def scatter(values: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """A full-length vector with ``values`` at ``mask`` and zeros elsewhere."""
    out = np.zeros(size, dtype=np.float64)
    out[mask] = values
    return out
