"""Splitting a silo's records by user into a forget set D_f and a retained set D_r."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import NamedTuple

from ..workloads.recommendation import Example


class ForgetSplit(NamedTuple):
    forget: list[Example]  # D_f: every record of the forgotten users
    retain: list[Example]  # D_r: everything else, in the original order
    users: tuple[str, ...]  # the forgotten users, sorted

    @property
    def users_digest(self) -> str:
        """SHA-256 of the sorted user ids, one per line: identifies the request without naming anyone."""
        return hashlib.sha256("\n".join(self.users).encode()).hexdigest()


def forget_split(
    dataset: Sequence[Example], users: Sequence[str] | None = None, fraction: float | None = None, seed: int = 0
) -> ForgetSplit:
    """Forget the given ``users``, or a seeded random ``fraction`` of the dataset's users (exactly one of the two).

    With a fraction, ``round(fraction * n_users)`` users are drawn (at least one), so the
    fraction is respected over users, not records. Records without a user id cannot be
    attributed and are refused.
    """
    if (users is None) == (fraction is None):
        raise ValueError("give exactly one of users and fraction")
    if any(not e.user for e in dataset):
        raise ValueError("every record needs a user id to be split by user")
    present = sorted({e.user for e in dataset})
    if fraction is not None:
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        n = max(1, round(fraction * len(present)))
        chosen = set(random.Random(seed).sample(present, n))
    else:
        chosen = set(users or ())
        if not chosen:
            raise ValueError("the forget list is empty")
    forget = [e for e in dataset if e.user in chosen]
    retain = [e for e in dataset if e.user not in chosen]
    return ForgetSplit(forget, retain, tuple(sorted(chosen)))
