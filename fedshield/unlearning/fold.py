"""Folding a new LoRA into the federation's adapter, keeping its rank and shared-vector layout.

The adapter has rank r per module (ΔW = s·B·A, s = alpha/r); the new LoRA adds
s'·B'·A' of rank r'. Their sum has rank up to r + r', which the layout cannot hold, so
each module gets the best rank-r approximation of the sum (truncated SVD, Eckart–Young),
factored back as B = U·sqrt(Σ/s), A = sqrt(Σ/s)·Vᵀ. Only the r' smallest directions of
the sum can be lost; ``FoldedAdapter.errors`` reports, per module, the relative Frobenius
norm of what was dropped (0 when the sum had rank ≤ r). Modules the new LoRA does not
touch keep their tensors bit for bit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..updates import VectorLayout

LORA_NAME = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.(?P<adapter>[^.]+)\.weight$")


def lora_pairs(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """Module path -> (name of its A, name of its B)."""
    parts: dict[str, dict[str, str]] = {}
    for name in tensors:
        m = LORA_NAME.match(name)
        if m is None:
            raise ValueError(f"{name!r} is not a LoRA A/B weight")
        parts.setdefault(m["module"], {})[m["part"]] = name
    if any(len(p) != 2 for p in parts.values()):
        raise ValueError("every LoRA module needs both its A and its B")
    return {module: (p["A"], p["B"]) for module, p in parts.items()}


def fold_module(a: torch.Tensor, b: torch.Tensor, scale: float, a_new: torch.Tensor, b_new: torch.Tensor,
                scale_new: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Rank-r (A, B) with ``scale·B·A`` closest to ``scale·b·a + scale_new·b_new·a_new``; and the relative error."""
    r = a.shape[0]
    left = torch.cat([scale * b.double(), scale_new * b_new.double()], dim=1)  # d_out x (r + r')
    right = torch.cat([a.double(), a_new.double()], dim=0)  # (r + r') x d_in
    q_left, r_left = torch.linalg.qr(left)
    q_right, r_right = torch.linalg.qr(right.T)
    u, sigma, vh = torch.linalg.svd(r_left @ r_right.T)
    keep = min(r, sigma.numel())
    root = torch.zeros(r, dtype=torch.float64)
    root[:keep] = torch.sqrt(sigma[:keep] / scale)
    u_r = torch.zeros(left.shape[0], r, dtype=torch.float64)
    v_r = torch.zeros(right.shape[1], r, dtype=torch.float64)
    u_r[:, :keep] = q_left @ u[:, :keep]
    v_r[:, :keep] = q_right @ vh[:keep].T
    total = float(torch.sum(sigma**2))
    error = float(torch.sqrt(torch.sum(sigma[keep:] ** 2) / total)) if total > 0 else 0.0
    return (root[:, None] * v_r.T).to(a.dtype), (u_r * root[None, :]).to(b.dtype), error


@dataclass(frozen=True)
class FoldedAdapter:
    shared: np.ndarray  # the new shared vector, in ``layout`` order (what a silo encrypts and uploads)
    private: dict[str, torch.Tensor]  # the new private tensors (stay at this silo)
    errors: dict[str, float]  # module -> relative Frobenius norm dropped by the rank-r truncation

    def tensors(self, layout: VectorLayout) -> dict[str, torch.Tensor]:
        """Every adapter tensor by name (shared from the vector, private as they are)."""
        return layout.unflatten(self.shared) | dict(self.private)


def unfolded_adapter(tensors: Mapping[str, torch.Tensor], layout: VectorLayout) -> FoldedAdapter:
    """A rank-preserving student's own tensors as the replacement adapter: nothing to fold, nothing dropped."""
    out = {name: t.detach().cpu().clone() for name, t in tensors.items()}
    shared = set(layout.names)
    return FoldedAdapter(layout.flatten(out), {n: t for n, t in out.items() if n not in shared},
                         {module: 0.0 for module in lora_pairs(out)})


def fold_into_adapter(adapter: Mapping[str, torch.Tensor], scale: float, new: Mapping[str, torch.Tensor], scale_new: float,
                      layout: VectorLayout) -> FoldedAdapter:
    """Fold the new LoRA (``new``, by the same PEFT names) into ``adapter``; split the result by ``layout``."""
    pairs, new_pairs = lora_pairs(adapter), lora_pairs(new)
    unknown = sorted(set(new_pairs) - set(pairs))
    if unknown:
        raise ValueError(f"the new LoRA has modules the adapter lacks: {unknown[:3]}")
    out = {name: t.detach().cpu().clone() for name, t in adapter.items()}
    errors = {}
    for module, (name_a, name_b) in new_pairs.items():
        a_name, b_name = pairs[module]
        out[a_name], out[b_name], errors[module] = fold_module(
            out[a_name], out[b_name], scale, new[name_a].detach().cpu(), new[name_b].detach().cpu(), scale_new)
    shared = set(layout.names)
    return FoldedAdapter(layout.flatten(out), {n: t for n, t in out.items() if n not in shared}, errors)
