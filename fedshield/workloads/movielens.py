"""MovieLens files as they are published: 100K, 1M and the latest releases, with genres and user attributes.

- 100K: ``u.data`` (user, item, rating, time; tabs), ``u.item`` (``|``-separated, 19 genre flags),
  optional ``u.user`` (user | age | gender | occupation | zip); latin-1.
- 1M: ``ratings.dat``, ``movies.dat`` (genres ``|``-separated), optional ``users.dat``
  (user :: gender :: age :: occupation :: zip); fields separated by ``::``; latin-1.
- latest (and what ``fedshield data split`` writes): ``ratings.csv`` + ``movies.csv``
  (genres ``|``-separated), optional ``users.csv`` (userId, gender, age, occupation, zip); UTF-8.

MovieLens may not be redistributed: the loaders read a directory the user gives. A malformed
line is a ``DataError`` naming the file and the line.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .base import DataError

GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
NO_GENRES = "(no genres listed)"
USER_ATTRIBUTES = ("gender", "age", "occupation")


@dataclass(frozen=True)
class Rating:
    user: str
    movie: str
    rating: float
    time: int


@dataclass(frozen=True)
class Movie:
    id: str
    title: str
    genres: tuple[str, ...] = ()


@dataclass(frozen=True)
class User:
    id: str
    gender: str = ""
    age: str = ""
    occupation: str = ""
    zip: str = ""


@dataclass
class MovieLens:
    """One MovieLens dataset: ratings, the movies (with genres), and the users when a users file exists."""

    format: str  # "100k", "1m" or "latest"
    ratings: list[Rating]
    movies: dict[str, Movie]
    users: dict[str, User] = field(default_factory=dict)

    def title(self, movie: str) -> str:
        return self.movies[movie].title if movie in self.movies else movie

    def genres(self, movie: str) -> tuple[str, ...]:
        return self.movies[movie].genres if movie in self.movies else ()


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) of the non-blank lines; undecodable bytes name their line."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise DataError(path, number, f"not {encoding.upper()} text ({exc.reason} at byte {exc.start} of the line)") from None
            if line.strip():
                yield number, line


def _fields(path: Path, number: int, line: str, sep: str, n: int) -> list[str]:
    fields = line.split(sep)
    if len(fields) < n:
        raise DataError(path, number, f"expected {n} fields separated by {sep!r}, got {len(fields)}: {line[:80]!r}")
    return fields


def _rating(path: Path, number: int, user: str, movie: str, rating: str, time: str) -> Rating:
    try:
        return Rating(user.strip(), movie.strip(), float(rating), int(float(time)))
    except ValueError:
        raise DataError(path, number, f"rating {rating!r} and timestamp {time!r} must be numbers") from None


def _need(path: Path, *names: str) -> None:
    for name in names:
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} is missing")


def _load_100k(path: Path) -> MovieLens:
    movies = {}
    for number, line in _lines(path / "u.item", "latin-1"):
        fields = _fields(path / "u.item", number, line, "|", 2)
        flags = fields[5:5 + len(GENRES_100K)]
        genres = tuple(g for g, flag in zip(GENRES_100K, flags, strict=False) if flag.strip() == "1")
        movies[fields[0]] = Movie(fields[0], fields[1], genres)
    ratings = [_rating(path / "u.data", n, *_fields(path / "u.data", n, line, "\t", 4)[:4])
               for n, line in _lines(path / "u.data", "latin-1")]
    users = {}
    if (path / "u.user").is_file():
        for number, line in _lines(path / "u.user", "latin-1"):
            uid, age, gender, occupation, zip_ = _fields(path / "u.user", number, line, "|", 5)[:5]
            users[uid] = User(uid, gender, age, occupation, zip_)
    return MovieLens("100k", ratings, movies, users)


def _load_1m(path: Path) -> MovieLens:
    movies = {}
    for number, line in _lines(path / "movies.dat", "latin-1"):
        mid, title, genres = _fields(path / "movies.dat", number, line, "::", 3)[:3]
        movies[mid] = Movie(mid, title, tuple(g for g in genres.split("|") if g))
    ratings = [_rating(path / "ratings.dat", n, *_fields(path / "ratings.dat", n, line, "::", 4)[:4])
               for n, line in _lines(path / "ratings.dat", "latin-1")]
    users = {}
    if (path / "users.dat").is_file():
        for number, line in _lines(path / "users.dat", "latin-1"):
            uid, gender, age, occupation, zip_ = _fields(path / "users.dat", number, line, "::", 5)[:5]
            users[uid] = User(uid, gender, age, occupation, zip_)
    return MovieLens("1m", ratings, movies, users)


def _csv_rows(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file with a header that has ``columns``."""
    lines = list(_lines(path, "utf-8"))
    if not lines:
        raise DataError(path, None, "empty file: no header and no rows")
    reader = csv.DictReader([line for _, line in lines])
    missing = [c for c in columns if c not in (reader.fieldnames or ())]
    if missing:
        raise DataError(path, lines[0][0], f"header lacks {', '.join(missing)} (has {', '.join(reader.fieldnames or ())})")
    for (number, _), row in zip(lines[1:], reader, strict=False):
        if any(row.get(c) is None for c in columns):
            raise DataError(path, number, f"expected the columns {', '.join(columns)}; the row is short")
        yield number, row


def _load_latest(path: Path) -> MovieLens:
    movies = {}
    for _, row in _csv_rows(path / "movies.csv", ("movieId", "title")):
        genres = tuple(g for g in (row.get("genres") or "").split("|") if g and g != NO_GENRES)
        movies[row["movieId"]] = Movie(row["movieId"], row["title"], genres)
    columns = ("userId", "movieId", "rating", "timestamp")
    ratings = [_rating(path / "ratings.csv", n, *(row[c] for c in columns)) for n, row in _csv_rows(path / "ratings.csv", columns)]
    users = {}
    if (path / "users.csv").is_file():
        for _, row in _csv_rows(path / "users.csv", ("userId",) + USER_ATTRIBUTES):
            users[row["userId"]] = User(row["userId"], row["gender"], row["age"], row["occupation"], row.get("zip") or "")
    return MovieLens("latest", ratings, movies, users)


def detect_format(path: str | Path) -> str:
    """Which MovieLens release ``path`` holds, by its files ("100k", "1m", "latest")."""
    path = Path(path)
    if (path / "u.data").exists() or (path / "u.item").exists():
        return "100k"
    if (path / "ratings.dat").exists() or (path / "movies.dat").exists():
        return "1m"
    if (path / "ratings.csv").exists() or (path / "movies.csv").exists():
        return "latest"
    raise FileNotFoundError(f"{path} holds no MovieLens files: expected u.data + u.item (100K), "
                            "ratings.dat + movies.dat (1M) or ratings.csv + movies.csv (latest)")


def load(path: str | Path) -> MovieLens:
    """The MovieLens dataset in directory ``path``, whichever release it is."""
    path = Path(path)
    fmt = detect_format(path)
    needed = {"100k": ("u.data", "u.item"), "1m": ("ratings.dat", "movies.dat"), "latest": ("ratings.csv", "movies.csv")}[fmt]
    _need(path, *needed)
    return {"100k": _load_100k, "1m": _load_1m, "latest": _load_latest}[fmt](path)


def write(data: MovieLens, directory: str | Path) -> Path:
    """``data`` in the latest layout: ``ratings.csv``, ``movies.csv`` (genres kept) and ``users.csv`` when users are known."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "movies.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["movieId", "title", "genres"])
        writer.writerows([m.id, m.title, "|".join(m.genres) or NO_GENRES] for m in data.movies.values())
    with open(directory / "ratings.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        writer.writerows([r.user, r.movie, f"{r.rating:g}", r.time] for r in data.ratings)
    if data.users:
        with open(directory / "users.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["userId", *USER_ATTRIBUTES, "zip"])
            writer.writerows([u.id, u.gender, u.age, u.occupation, u.zip] for u in data.users.values())
    return directory


def subset(data: MovieLens, users: set[str]) -> MovieLens:
    """The ratings of ``users`` only, with the movies they rated and their user records."""
    ratings = [r for r in data.ratings if r.user in users]
    rated = {r.movie for r in ratings}
    return MovieLens(data.format, ratings, {k: m for k, m in data.movies.items() if k in rated},
                     {k: u for k, u in data.users.items() if k in users})


def by_user(ratings: Sequence[Rating]) -> dict[str, list[Rating]]:
    """Each user's ratings in time order (ties broken by movie id)."""
    out: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings:
        out[r.user].append(r)
    return {u: sorted(rs, key=lambda r: (r.time, r.movie)) for u, rs in out.items()}


def temporal_split(ratings: Sequence[Rating], holdout: int = 1) -> tuple[list[Rating], list[Rating]]:
    """Per user, the last ``holdout`` ratings in time are held out; the earlier ones train.

    A user with ``holdout`` ratings or fewer keeps them all in training (nothing earlier to learn from).
    Nothing in training is later than any held-out rating of the same user.
    """
    if holdout < 1:
        raise ValueError(f"holdout must be at least 1, got {holdout}")
    train, held = [], []
    for seq in by_user(ratings).values():
        cut = len(seq) - holdout if len(seq) > holdout else len(seq)
        train.extend(seq[:cut])
        held.extend(seq[cut:])
    return train, held
