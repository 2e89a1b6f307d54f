"""A round's plan: aggregation weights, learning-rate scales and PPLR warm-up weights (pure functions).

One definition, used by the aggregator (``aggregator.rounds``) and the in-process federation
(``local.simulation``), so a benchmark's rounds weigh silos exactly as a deployed federation does.
Inputs are what the federation agreed (declared sample counts) and closed rounds' validation
losses (the global model's, as silos report them); the rules are in ``fairness``.
"""

from __future__ import annotations

from .config import FederationConfig
from .fairness import fedavg_weights, loss_weights, lr_scales, round_warmup_weights


def effective_samples(config: FederationConfig, joined: dict[str, int]) -> dict[str, int]:
    """The sample counts weights use: declared counts bound the claims; nothing declared means equal weights."""
    declared = config.declared_samples
    if declared is None:
        return {name: 1 for name in joined}
    return {name: min(claimed, declared.get(name, claimed)) for name, claimed in joined.items()}


def compute_plan(config: FederationConfig, samples: dict[str, int], losses: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """A round's weights and learning-rate scales from the agreed samples and the last validation losses (pure)."""
    agg = config.aggregation
    if agg.strategy == "dynamic_balance":
        return (loss_weights(samples, losses, q=agg.q, cap=agg.max_weight),
                lr_scales(losses, list(config.silo_names), gamma=agg.gamma))
    return fedavg_weights(samples, cap=agg.max_weight), {name: 1.0 for name in config.silo_names}


def compute_mix_weights(config: FederationConfig, losses: dict[str, float], round: int) -> dict[str, float]:
    """aggregation.personalise: each silo's PPLR warm-up weight for ``round`` from closed rounds' losses ({} when off; pure)."""
    agg = config.aggregation
    if not agg.personalise:
        return {}
    return round_warmup_weights(losses, config.silo_names, round, alpha=agg.warmup_alpha, beta=agg.warmup_beta,
                                temperature=agg.warmup_temperature)


Plan = tuple[dict[str, float], dict[str, float], dict[str, float]]  # a round's weights, lr scales and warm-up weights
