"""Which examples a silo trains and validates on, and which base model directory it loads.

A silo's data folder is its ``silos[].dataPath`` (under the operator: where its
datasetVolume is mounted), else ``data.path/<silo>``; without either, the workload's
synthetic data: non-IID MovieLens-like ratings for recommendation, the triage notes of one
of three clinical domains (by the silo's position) for instruction. The tiny demo model's
word-level tokenizer learns only public text: the synthetic catalogue or the triage
generator's vocabulary, and the prompt templates.
"""

from __future__ import annotations

from pathlib import Path

from ..config import FederationConfig
from ..workloads import triage
from ..workloads.base import Split
from ..workloads.recommendation import catalog, load_movielens, prompt_for, synthetic_silos
from .model import build_tiny_base
from .recommendation import RecommendationWorkload
from .workloads import workload_for

SYNTHETIC_TRIAGE_EXAMPLES = 160  # per silo, before the validation share is held out


def silo_data_path(config: FederationConfig, silo: str) -> Path | None:
    """The folder holding ``silo``'s files, or None when it uses synthetic data."""
    spec = next(s for s in config.silos if s.name == silo)
    if spec.data_path:
        return Path(spec.data_path)
    return Path(config.data.path) / silo if config.data.path else None


def synthetic_split(config: FederationConfig, silo: str) -> Split:
    """``silo``'s synthetic examples for the federation's workload."""
    data = config.data
    if config.workload == "instruction":
        domains = list(triage.DOMAINS)
        domain = domains[config.silo_names.index(silo) % len(domains)]
        rows = list({e.prompt: e for e in triage.examples(domain, SYNTHETIC_TRIAGE_EXAMPLES, seed=data.seed)}.values())
        n_val = max(1, round(len(rows) * data.val_fraction))
        return Split(rows[n_val:], rows[:n_val])  # distinct notes: no validation note is also a training note
    workload = workload_for(config)
    assert isinstance(workload, RecommendationWorkload)  # the only other workload
    return workload.split(synthetic_silos(config.silo_names, seed=data.seed)[silo])


def silo_split(config: FederationConfig, silo: str) -> Split:
    """``silo``'s train and validation examples; bad files raise ``DataError`` naming file and line."""
    path = silo_data_path(config, silo)
    split = workload_for(config).examples(path) if path is not None else synthetic_split(config, silo)
    if len(split.train) < 2 or not split.validation:
        raise ValueError(f"silo {silo!r} has {len(split.train)} training and {len(split.validation)} validation examples "
                         f"({path or 'synthetic data'}); it needs at least 2 and 1")
    return split


def silo_examples(config: FederationConfig, silo: str) -> tuple[list, list]:
    """(train, validation) examples of ``silo`` (see ``silo_split``)."""
    split = silo_split(config, silo)
    return list(split.train), list(split.validation)


def public_corpus(config: FederationConfig) -> list[str]:
    """What the tiny tokenizer is trained on: public text of the workload (never a silo's files)."""
    if config.workload == "instruction":
        return triage.vocabulary()
    paths = [p for p in (silo_data_path(config, s) for s in config.silo_names) if p is not None]
    if paths:  # local runs of the tiny model on MovieLens files: the titles of every silo's catalogue
        titles = sorted({it.item for path in paths for it in load_movielens(path)})
    else:
        titles = catalog(seed=config.data.seed)
    return titles + [prompt_for(["x"], ["y"], "z")]


def base_model_path(config: FederationConfig, cache_dir: Path) -> Path:
    """The configured model directory, or the tiny demo model (built once into ``cache_dir``)."""
    if config.model.path:
        return Path(config.model.path)
    return build_tiny_base(cache_dir / f"tiny-llama-{config.workload}", public_corpus(config), seed=config.seed)
