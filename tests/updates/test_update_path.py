"""The update path as a whole: every coordinate travels, and DP noise does not drown the fresh update.

Both defects these tests guard against passed every unit test of the parts: masks whose
explore windows overlapped (so a third of the adapter never moved) and DP that clipped the
error-feedback residual instead of the round's own update.
"""

import math

import numpy as np
import pytest

from fedshield.config import FederationConfig, LoraSpec, PrivacySpec, SiloSpec, TrainingSpec
from fedshield.crypto import EncryptedSum, EnvelopeReader, PackingParams, create_keys, decrypt_envelope, encrypt_update
from fedshield.local.simulation import InProcessFederation
from fedshield.privacy import Budget, release
from fedshield.updates import kept_count, next_residual, next_score, round_mask

pytestmark = pytest.mark.slow


def rounds_to_cover(size: int, pruning: float, explore_share: float) -> int:
    """The schedule's promise: round 0 sends k coordinates, each later round ``explore`` new ones."""
    k = kept_count(size, pruning)
    explore = max(1, math.floor(k * explore_share + 0.5))
    return 1 + math.ceil((size - k) / explore)


@pytest.mark.parametrize("pruning", [0.5, 0.9, 0.99])
def test_real_training_and_real_aggregates_send_every_coordinate(tmp_path, pruning):
    config = FederationConfig(
        rounds=1, silos=(SiloSpec(name="clinic-a"), SiloSpec(name="clinic-b")),
        lora=LoraSpec(r=2, target_modules=("q_proj", "v_proj")),
        training=TrainingSpec(local_steps=1, batch_size=4),
        privacy=PrivacySpec(pruning=pruning),
    )
    federation = InProcessFederation(config, tmp_path)
    bound = rounds_to_cover(federation.layout.size, pruning, config.privacy.explore_share)
    assert bound <= 210, "the test's budget of rounds"
    rounds = [federation.run_round(r, evaluate=False) for r in range(bound)]
    assert rounds[-1].coverage == 1.0, f"after {bound} rounds only {rounds[-1].coverage:.1%} of the coordinates were ever sent"
    assert all(r.kept == kept_count(federation.layout.size, pruning) for r in rounds)


def test_the_exploit_share_is_not_just_last_rounds_support():
    size, pruning, seed = 2000, 0.9, 5
    rng = np.random.default_rng(0)
    score, masks = None, []
    for r in range(6):
        mask = round_mask(size, pruning, r, seed, score=score)
        score = next_score(score, rng.normal(0, 1, mask.size), mask, size)
        masks.append(set(mask.tolist()))
    # Coordinates sent in round 0 but not in round 1 still count towards the signal of round 2.
    assert np.count_nonzero(score) > kept_count(size, pruning)


def _dp_rounds(rounds: int, size: int = 8192, silos: int = 3, sigma: float = 0.05, pruning: float = 0.5):
    """Silos whose fresh deltas share one direction (norm C); returns the cosine of the applied and the true mean update."""
    keys, budget = create_keys(), Budget(clip_norm=1.0, noise_multiplier=sigma, delta=1e-5, epsilon_budget=float("inf"))
    packing = PackingParams(value_bound=4 * sigma)
    rng = np.random.default_rng(0)
    direction = rng.normal(size=size)
    direction /= np.linalg.norm(direction)
    residuals: list[np.ndarray | None] = [None] * silos
    applied, true = np.zeros(size), np.zeros(size)
    score = None
    for r in range(rounds):
        mask = round_mask(size, pruning, r, seed=1, score=score)
        total = EncryptedSum(keys.public(), r, mask.size, packing=packing)
        deltas = []
        for i in range(silos):
            own = rng.normal(size=size)
            delta = 0.9 * direction + 0.1 * own / np.linalg.norm(own)
            deltas.append(delta)
            update = release(delta, residuals[i], budget, rng)
            enc = encrypt_update(keys, update[mask], weight=1 / silos, round=r, silo=f"silo-{i}", packing=packing)
            total.add(EnvelopeReader.from_bytes(enc.data))
            residuals[i] = next_residual(update, mask, enc.sent)
        average = decrypt_envelope(keys, EnvelopeReader.from_bytes(total.to_bytes()), round=r, count=mask.size)
        applied[mask] += average
        score = next_score(score, average, mask, size)
        true += np.mean(deltas, axis=0)
    return float(applied @ true / (np.linalg.norm(applied) * np.linalg.norm(true)))


def test_dp_noise_does_not_drown_the_fresh_update():
    # Per-silo noise norm sigma * C * sqrt(size) is about 4.5 C: each round's own update must still be
    # clipped at C, not scaled down by the residual's accumulated noise.
    cosine = _dp_rounds(rounds=8)
    assert cosine > 0.5, f"cosine of the applied update with the true mean delta over 8 rounds: {cosine:.3f}"


def test_release_clips_the_fresh_delta_and_adds_the_residual_unclipped():
    budget = Budget(clip_norm=1.0, noise_multiplier=1e-9, delta=1e-5, epsilon_budget=1.0)
    delta, residual = np.full(4, 10.0), np.full(4, 100.0)
    out = release(delta, residual, budget, np.random.default_rng(0))
    assert np.allclose(out, delta / np.linalg.norm(delta) + residual, atol=1e-6)
