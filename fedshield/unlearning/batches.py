"""Seeded epoch-wise batches of example indices (every example once per epoch)."""

from __future__ import annotations

import random
from collections.abc import Iterator


def epoch_batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless shuffled batches over ``range(n)``; each epoch is ``ceil(n / batch_size)`` batches."""
    if n <= 0:
        raise ValueError("no examples to draw batches from")
    rng = random.Random(seed)
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for i in range(0, n, batch_size):
            yield order[i : i + batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
