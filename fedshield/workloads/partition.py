"""One MovieLens dataset split into per-silo folders (``fedshield data split``).

Every split is by user, so a user's whole history stays in one silo (a temporal split of it
then holds out that user's last interactions). Three ways:

- ``user``: by a stable hash of the user id (about equal, IID silos);
- ``genre``: each user's dominant genre is a class, and each class is spread over the silos
  in proportions drawn from Dirichlet(alpha) (small alpha: silos with very different tastes);
- ``attribute``: one silo per value of a user attribute (gender, age or occupation) from the
  users file.

Each silo folder is written in the latest MovieLens layout (``ratings.csv``, ``movies.csv``
with genres, ``users.csv`` when users are known), which ``load_movielens`` reads back;
``split.json`` beside them says how the split was made.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import movielens
from .movielens import USER_ATTRIBUTES, MovieLens

METHODS = ("user", "genre", "attribute")
MANIFEST = "split.json"
SILO_FOLDER = re.compile(r"[A-Za-z0-9._-]+")


def silo_names(silos: str | int | Sequence[str]) -> list[str]:
    """``3`` or ``"3"`` -> silo-1..silo-3; ``"a,b"`` or ``["a", "b"]`` -> those names."""
    if isinstance(silos, int) or (isinstance(silos, str) and silos.strip().isdigit()):
        n = int(silos)
        if n < 1:
            raise ValueError(f"need at least one silo, got {n}")
        return [f"silo-{i + 1}" for i in range(n)]
    names = [s.strip() for s in (silos.split(",") if isinstance(silos, str) else silos) if s.strip()]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"silo names must be given and distinct: {silos!r}")
    bad = [n for n in names if not SILO_FOLDER.fullmatch(n) or n in (".", "..")]
    if bad:
        raise ValueError(f"silo names become folder names: letters, digits, '.', '_' and '-' only, got {bad[0]!r}")
    return names


def by_hash(users: Sequence[str], silos: Sequence[str]) -> dict[str, str]:
    """user -> silo by SHA-256 of the user id (the same on every machine and Python)."""
    return {u: silos[int.from_bytes(hashlib.sha256(u.encode()).digest()[:8], "big") % len(silos)] for u in users}


def dominant_genre(data: MovieLens) -> dict[str, str]:
    """user -> the genre most of their rated movies carry (ties: alphabetical; "" with no genres)."""
    counts: dict[str, Counter] = {}
    for r in data.ratings:
        counts.setdefault(r.user, Counter()).update(data.genres(r.movie))
    return {u: (min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] if c else "") for u, c in counts.items()}


def by_dirichlet(classes: dict[str, str], silos: Sequence[str], alpha: float, seed: int) -> dict[str, str]:
    """user -> silo: the users of each class are shuffled and cut in Dirichlet(alpha) proportions."""
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for cls in sorted(set(classes.values())):
        members = sorted(u for u, c in classes.items() if c == cls)
        rng.shuffle(members)
        shares = rng.dirichlet(np.full(len(silos), alpha))
        cuts = np.round(np.cumsum(shares) * len(members)).astype(int)
        start = 0
        for silo, end in zip(silos, cuts, strict=False):
            out.update((u, silo) for u in members[start:end])
            start = end
    return out


def _folder(value: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-") or "unknown"


def by_attribute(data: MovieLens, attribute: str) -> dict[str, str]:
    """user -> ``<attribute>-<value>`` (a folder name) from the users file."""
    if attribute not in USER_ATTRIBUTES:
        raise ValueError(f"attribute must be one of {', '.join(USER_ATTRIBUTES)}, got {attribute!r}")
    if not data.users:
        raise ValueError(f"splitting by {attribute} needs a users file (u.user, users.dat or users.csv); this {data.format} "
                         "dataset has none")
    missing = sorted({r.user for r in data.ratings} - set(data.users))
    if missing:
        raise ValueError(f"users {', '.join(missing[:5])} have ratings but no record in the users file")
    return {u: f"{attribute}-{_folder(getattr(rec, attribute))}" for u, rec in data.users.items()}


def assign(data: MovieLens, method: str, silos: Sequence[str] = (), alpha: float = 0.5, seed: int = 0,
           attribute: str = "gender") -> dict[str, str]:
    """user -> silo for every user with ratings."""
    users = sorted({r.user for r in data.ratings})
    if method == "user":
        return by_hash(users, silos)
    if method == "genre":
        return by_dirichlet(dominant_genre(data), silos, alpha, seed)
    if method == "attribute":
        mapping = by_attribute(data, attribute)
        return {u: mapping[u] for u in users}
    raise ValueError(f"unknown split {method!r}; one of {', '.join(METHODS)}")


def split_dataset(source: str | Path, out: str | Path, method: str, silos: str | int | Sequence[str] = 3,
                  alpha: float = 0.5, seed: int = 0, attribute: str = "gender", force: bool = False) -> dict:
    """Write one folder per silo under ``out`` (plus ``split.json``); returns the manifest."""
    out = Path(out)
    if (out / MANIFEST).exists() and not force:
        raise FileExistsError(f"{out} already holds a split ({MANIFEST}); pass force to replace it")
    data = movielens.load(source)
    if (out / MANIFEST).exists():  # force: the earlier split's folders go, so none is left over
        for silo in json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("silos", {}):
            if SILO_FOLDER.fullmatch(silo) and silo not in (".", ".."):
                shutil.rmtree(out / silo, ignore_errors=True)
    if not data.ratings:
        raise ValueError(f"{source} holds no ratings")
    names = silo_names(silos) if method != "attribute" else []
    mapping = assign(data, method, names, alpha=alpha, seed=seed, attribute=attribute)
    folders = names or sorted(set(mapping.values()))
    manifest: dict[str, Any] = {"source": str(source), "format": data.format, "by": method, "seed": seed,
                "alpha": alpha if method == "genre" else None, "attribute": attribute if method == "attribute" else None,
                "silos": {}}
    for silo in folders:
        users = {u for u, s in mapping.items() if s == silo}
        part = movielens.subset(data, users)
        movielens.write(part, out / silo)
        manifest["silos"][silo] = {"users": len(users), "ratings": len(part.ratings)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
