"""Which examples a silo trains and validates on, and the public text the tiny base model's tokenizer learns."""

from __future__ import annotations

from pathlib import Path

from ..config import FederationConfig
from ..workloads.recommendation import (
    Example,
    build_examples,
    catalog,
    load_movielens,
    prompt_for,
    split_examples,
    synthetic_silos,
)


def silo_interactions(config: FederationConfig, silo: str):
    if config.data.movielens_path:
        return load_movielens(Path(config.data.movielens_path) / silo)
    return synthetic_silos(config.silo_names, seed=config.data.seed)[silo]


def silo_examples(config: FederationConfig, silo: str) -> tuple[list[Example], list[Example]]:
    examples = build_examples(silo_interactions(config, silo), history=config.data.history)
    if len(examples) < 4:
        raise ValueError(f"silo {silo!r} has only {len(examples)} examples")
    return split_examples(examples, config.data.val_fraction, seed=config.data.seed)


def public_corpus(config: FederationConfig) -> list[str]:
    """Item titles (a public catalogue) and the prompt template: what the tiny tokenizer is trained on."""
    if config.data.movielens_path:
        titles = sorted({it.item for silo in config.silo_names for it in silo_interactions(config, silo)})
    else:
        titles = catalog(seed=config.data.seed)
    return titles + [prompt_for(["x"], ["y"], "z")]
