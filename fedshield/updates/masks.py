"""The round's pruning mask: which coordinates of the update vector travel.

Every silo must put the same coordinate in the same slot, so the mask is a pure
function of data all silos share: the run's seed, the round number and a score
vector every silo holds identically (the magnitude of the last decrypted global
aggregate). It never depends on a silo's own update.

Two shares:

- explore: consecutive windows of a seeded permutation. Round 0 (no score yet) sends
  the first ``k`` coordinates; every later round the next ``explore = round(k *
  explore_share)``, so no window repeats another before the permutation wraps and every
  coordinate has been sent after ``1 + ceil((size - k) / explore)`` rounds, whatever
  the score;
- exploit: the largest scores among the rest. The score (:func:`next_score`) is a decayed
  sum of the magnitudes of every aggregate so far, so coordinates that moved in earlier
  rounds stay candidates, not only last round's. Ties are broken by index, so the result
  does not depend on the sort algorithm.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=2)
def _permutation(size: int, seed: int) -> np.ndarray:
    perm = np.random.default_rng([seed, size]).permutation(size)
    perm.flags.writeable = False
    return perm


def kept_count(size: int, pruning: float) -> int:
    """Coordinates kept when a fraction ``pruning`` is dropped (at least one)."""
    if not 0.0 <= pruning < 1.0:
        raise ValueError(f"pruning must be in [0, 1), got {pruning}")
    return max(1, min(size, int(round(size * (1.0 - pruning)))))


def _top_by_score(score: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores; ties at the threshold go to the lowest indices."""
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k >= score.size:
        return np.arange(score.size, dtype=np.int64)
    threshold = np.partition(score, score.size - k)[score.size - k]
    above = np.flatnonzero(score > threshold)
    ties = np.flatnonzero(score == threshold)[: k - above.size]
    return np.concatenate([above, ties])


def explore_count(size: int, pruning: float, explore_share: float) -> int:
    """Coordinates each round after the first takes from the permutation."""
    return max(1, round_half(kept_count(size, pruning) * explore_share))


def explore_start(size: int, pruning: float, round: int, explore_share: float) -> int:
    """Where ``round``'s explore window starts in the permutation: right after the previous one."""
    if round == 0:
        return 0
    return (kept_count(size, pruning) + (round - 1) * explore_count(size, pruning, explore_share)) % size


def rounds_to_cover(size: int, pruning: float, explore_share: float) -> int:
    """Rounds after which every coordinate has been sent at least once."""
    rest = size - kept_count(size, pruning)
    return 1 + -(-rest // explore_count(size, pruning, explore_share))


def round_mask(
    size: int,
    pruning: float,
    round: int,
    seed: int,
    score: np.ndarray | None = None,
    explore_share: float = 0.5,
) -> np.ndarray:
    """Sorted int64 indices of the coordinates kept in ``round``.

    In round 0 (and whenever no score is given) every kept coordinate comes from the
    explore share: no aggregate exists yet to exploit.
    """
    if not 0.0 < explore_share <= 1.0:
        raise ValueError(f"explore_share must be in (0, 1], got {explore_share}")
    k = kept_count(size, pruning)
    if k == size:
        return np.arange(size, dtype=np.int64)
    n_explore = k if round == 0 or score is None else explore_count(size, pruning, explore_share)
    perm = _permutation(size, seed)
    start = explore_start(size, pruning, round, explore_share)
    explore = np.take(perm, np.arange(start, start + n_explore), mode="wrap")
    if n_explore == k:
        return np.sort(explore)
    score = np.abs(np.asarray(score, dtype=np.float64))
    if score.shape != (size,):
        raise ValueError(f"score has shape {score.shape}, expected ({size},)")
    score = score.copy()
    score[explore] = -1.0  # below every real magnitude: never chosen twice
    exploit = _top_by_score(score, k - n_explore)
    return np.sort(np.concatenate([explore, exploit]))


def round_half(x: float) -> int:
    return int(np.floor(x + 0.5))


SCORE_DECAY = 0.5


def next_score(previous: np.ndarray | None, average: np.ndarray, mask: np.ndarray, size: int,
               decay: float = SCORE_DECAY) -> np.ndarray:
    """The exploit signal of the next round's mask: ``decay * previous + |aggregate|`` (scattered).

    Only aggregates enter it, which every silo decrypts identically, so every silo
    derives the same mask and the aggregator learns nothing it did not already have.
    """
    out = np.zeros(size, dtype=np.float64) if previous is None else decay * np.asarray(previous, dtype=np.float64)
    out[mask] += np.abs(average)
    return out
