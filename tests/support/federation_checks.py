"""Independent recomputation of a finished federation's global adapter from what was uploaded."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from peft import PeftModel

from fedshield.config import AggregationSpec, FederationConfig
from fedshield.crypto import EnvelopeReader, decrypt_envelope, load_keys
from fedshield.learning.model import load_base, with_lora
from fedshield.local.demo import Federation
from fedshield.updates import VectorLayout, lora_parameters, round_mask, scatter

# The aggregator deletes a closed round's uploads (issue 17); tests that recompute the global adapter keep them.
KEEP_UPLOADS = AggregationSpec(upload_retention_rounds=10**6)


def expected_global(config: FederationConfig, out: Path) -> tuple[VectorLayout, np.ndarray]:
    """Initial shared adapter plus, per round, the weighted average of the uploads the aggregator accepted."""
    keys = load_keys(out / "keys" / "secret.ckks")
    base, _ = load_base(out / "model-cache" / "tiny-llama-recommendation")
    initial = with_lora(base, config.lora.r, config.lora.alpha, config.lora.dropout, config.lora.target_modules, seed=config.seed)
    layout = VectorLayout.from_tensors(lora_parameters(initial), config.privacy.private_modules)
    vector, score = layout.flatten(lora_parameters(initial)), None
    for r in range(config.rounds):
        round_dir = out / "state" / "rounds" / f"{r:05d}"
        aggregate = EnvelopeReader.open(round_dir / "aggregate.fshe")
        uploads = [EnvelopeReader.open(round_dir / f"{s}.fshe") for s in aggregate.header.contributors]
        weights = np.array([u.header.weight for u in uploads])
        average = sum(w * decrypt_envelope(keys, u, round=r) for w, u in zip(weights, uploads, strict=False)) / weights.sum()
        assert np.abs(decrypt_envelope(keys, aggregate, round=r) - average).max() < 1e-12
        mask = round_mask(layout.size, config.privacy.pruning, r, config.seed, score=score, explore_share=config.privacy.explore_share)
        vector[mask] += average
        # The exploit score: every aggregate's magnitude so far, halved each round (docs/crypto.md).
        score = np.abs(scatter(average, mask, layout.size)) + (0.5 * score if score is not None else 0.0)
    return layout, vector


def saved_shared_vector(layout: VectorLayout, out: Path, silo: str) -> np.ndarray:
    base, _ = load_base(out / "model-cache" / "tiny-llama-recommendation")
    adapter = PeftModel.from_pretrained(base, out / "silos" / silo / "adapter")
    return layout.flatten(lora_parameters(adapter))


def wait_for(condition, timeout_s: float, federation: Federation, allow_down: tuple[str, ...] = ()) -> None:
    """Poll ``condition`` until true; fail early when a process (other than ``allow_down``) died with an error."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if any(name not in allow_down and proc.poll() not in (None, 0) for name, proc in federation.procs.items()):
            federation.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.1)


def rank_pid(federation: Federation, silo: str, rank: int) -> int:
    """The process id of one rank of a multi-rank silo: the worker of its torchrun whose RANK is ``rank``."""
    import psutil  # a DeepSpeed dependency

    for child in psutil.Process(federation.procs[silo].pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "fedshield.cli" in child.cmdline():
                return child.pid
        except psutil.Error:
            continue
    raise LookupError(f"silo {silo} has no running rank {rank}")
