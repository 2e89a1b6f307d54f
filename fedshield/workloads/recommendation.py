"""LLM recommendation in the TALLRec style: Yes/No prompts from interaction histories.

From a user's interactions in time order, each target item gets a prompt naming up
to ``history`` earlier items the user liked or disliked; the label is whether the user
liked the target (rating >= ``like_threshold``). A model scores the prompt by its
probability of answering "yes".
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import movielens

ANSWER_YES, ANSWER_NO = "yes", "no"


@dataclass(frozen=True)
class Interaction:
    user: str
    item: str
    rating: float
    time: int


@dataclass(frozen=True)
class Example:
    prompt: str
    label: int  # 1 = the user liked the target item
    user: str = ""  # whose interaction it is ("" when unknown); lets a silo forget a user's records


def prompt_for(liked: Sequence[str], disliked: Sequence[str], target: str) -> str:
    liked_text = " , ".join(liked) if liked else "nothing"
    disliked_text = " , ".join(disliked) if disliked else "nothing"
    return f"the user liked {liked_text} and disliked {disliked_text} . will the user like {target}"


def build_examples(interactions: Iterable[Interaction], history: int = 5, like_threshold: float = 4.0) -> list[Example]:
    """One example per interaction that has at least one earlier interaction of its user."""
    by_user: dict[str, list[Interaction]] = defaultdict(list)
    for it in interactions:
        by_user[it.user].append(it)
    examples = []
    for user in sorted(by_user):
        seq = sorted(by_user[user], key=lambda it: (it.time, it.item))
        for t in range(1, len(seq)):
            past = seq[max(0, t - history) : t]
            liked = [it.item for it in past if it.rating >= like_threshold]
            disliked = [it.item for it in past if it.rating < like_threshold]
            examples.append(Example(prompt_for(liked, disliked, seq[t].item), int(seq[t].rating >= like_threshold), user))
    return examples


def split_examples(examples: Sequence[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded random train/validation split."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(examples) * val_fraction)))
    val = [examples[i] for i in sorted(order[:n_val])]
    train = [examples[i] for i in sorted(order[n_val:])]
    return train, val


# --- synthetic non-IID data --------------------------------------------------------------

GENRES = ("action", "comedy", "drama", "horror", "romance", "scifi", "western", "musical")
_ADJECTIVES = ("silver", "quiet", "broken", "golden", "hidden", "last", "red", "wild")
_NOUNS = ("river", "storm", "city", "garden", "road", "night", "crown", "signal")


def catalog(items_per_genre: int = 6, seed: int = 0) -> list[str]:
    """Item titles; each ends with its genre, as a catalogue entry would."""
    rng = random.Random(seed)
    titles: list[str] = []
    for genre in GENRES:
        pairs = rng.sample([(a, n) for a in _ADJECTIVES for n in _NOUNS], items_per_genre)
        titles.extend(f"{a} {n} {genre}" for a, n in pairs)
    return titles


def synthetic_silos(
    silos: Sequence[str], seed: int = 0, users: Sequence[int] | None = None, items_per_user: int = 10,
    fit_probability: float = 0.9,
) -> dict[str, list[Interaction]]:
    """Interactions per silo that differ in taste and size (non-IID).

    Each silo favours a few genres (a Dirichlet draw with low concentration); each
    user likes two genres drawn from the silo's taste and rates their items high
    with probability ``fit_probability``, other items low with the same probability.
    The other ratings are the user's own whims: no rule predicts them, so a model can
    only fit them by memorising that user's records (a lower ``fit_probability`` gives
    a model more to memorise per user, e.g. for membership inference).
    """
    if not 0.5 <= fit_probability <= 1:
        raise ValueError("fit_probability must lie in [0.5, 1] (0.5: ratings ignore genre)")
    rng = np.random.default_rng(seed)
    titles = catalog(seed=seed)
    genre_of = {t: t.split()[-1] for t in titles}
    users = users or [int(40 * 0.6**i) + 12 for i in range(len(silos))]
    data: dict[str, list[Interaction]] = {}
    for silo, n_users in zip(silos, users, strict=False):
        taste = rng.dirichlet(np.full(len(GENRES), 0.3))
        records = []
        for u in range(n_users):
            liked = set(rng.choice(GENRES, size=2, replace=False, p=taste))
            for t, item in enumerate(rng.choice(titles, size=items_per_user, replace=False)):
                fits = (genre_of[item] in liked) == (rng.random() < fit_probability)
                rating = float(rng.integers(4, 6) if fits else rng.integers(1, 4))
                records.append(Interaction(f"{silo}-u{u}", str(item), rating, t))
        data[silo] = records
    return data


def skewed_silos(
    silos: Sequence[str], seed: int = 0, users: Sequence[int] | None = None, items_per_user: int = 16,
    items_per_genre: int = 20, taste_alpha: float = 0.3,
) -> dict[str, list[Interaction]]:
    """Interactions per silo with label skew and item skew: each silo has its own taste (Dirichlet(``taste_alpha``)
    over genres, which genres its users like) and its own items (the catalogue cut into disjoint, equal shares).

    What transfers between silos is the rule, not the items: a user likes items of the genres of the items they
    liked before (every title ends with its genre). Users like two genres drawn from their silo's taste; an item
    of a liked genre is rated high with probability 0.9, any other item low with probability 0.9.
    """
    rng = np.random.default_rng(seed)
    titles = catalog(items_per_genre=items_per_genre, seed=seed)
    shares = np.array_split(rng.permutation(len(titles)), len(silos))
    if min(len(s) for s in shares) < items_per_user:
        raise ValueError(f"{len(titles)} items in {len(silos)} disjoint shares leave fewer than {items_per_user} per silo")
    users = users or [int(40 * 0.6**i) + 12 for i in range(len(silos))]
    data: dict[str, list[Interaction]] = {}
    for silo, n_users, share in zip(silos, users, shares, strict=False):
        own = [titles[i] for i in sorted(share)]
        taste = rng.dirichlet(np.full(len(GENRES), taste_alpha))
        records = []
        for u in range(n_users):
            liked = set(rng.choice(GENRES, size=2, replace=False, p=taste))
            for t, item in enumerate(rng.choice(own, size=items_per_user, replace=False)):
                fits = (str(item).split()[-1] in liked) == (rng.random() < 0.9)
                rating = float(rng.integers(4, 6) if fits else rng.integers(1, 4))
                records.append(Interaction(f"{silo}-u{u}", str(item), rating, t))
        data[silo] = records
    return data


# --- MovieLens-format files --------------------------------------------------------------


def load_movielens(path: str | Path) -> list[Interaction]:
    """Interactions from a MovieLens directory: 100K (``u.data`` + ``u.item``), 1M (``ratings.dat`` + ``movies.dat``)
    or the latest layout (``ratings.csv`` + ``movies.csv``); see ``workloads.movielens``."""
    data = movielens.load(path)
    return [Interaction(r.user, data.title(r.movie).lower(), r.rating, r.time) for r in data.ratings]


def temporal_examples(
    interactions: Iterable[Interaction], holdout: int = 1, history: int = 5, like_threshold: float = 4.0
) -> tuple[list[Example], list[Example]]:
    """Train and validation examples by time: each user's last ``holdout`` interactions are the validation targets.

    Training examples have targets and histories from a user's earlier interactions only;
    a validation example's history is what came before its target. A user with ``holdout``
    interactions or fewer is all training.
    """
    by_user: dict[str, list[Interaction]] = defaultdict(list)
    for it in interactions:
        by_user[it.user].append(it)
    train, val = [], []
    for user in sorted(by_user):
        seq = sorted(by_user[user], key=lambda it: (it.time, it.item))
        cut = len(seq) - holdout if len(seq) > holdout else len(seq)
        train.extend(build_examples(seq[:cut], history, like_threshold))
        for t in range(max(cut, 1), len(seq)):
            past = seq[max(0, t - history) : t]
            liked = [it.item for it in past if it.rating >= like_threshold]
            disliked = [it.item for it in past if it.rating < like_threshold]
            val.append(Example(prompt_for(liked, disliked, seq[t].item), int(seq[t].rating >= like_threshold), user))
    return train, val


def write_movielens(interactions: Sequence[Interaction], directory: str | Path) -> Path:
    """``ratings.csv`` + ``movies.csv`` (the MovieLens format the silos read) for these interactions."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ids = {title: str(i) for i, title in enumerate(sorted({it.item for it in interactions}))}
    with open(directory / "movies.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["movieId", "title", "genres"])
        writer.writerows([i, title, ""] for title, i in ids.items())
    with open(directory / "ratings.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        writer.writerows([it.user, ids[it.item], it.rating, it.time] for it in interactions)
    return directory
