"""Small MovieLens directories in each published layout, written by the tests (MovieLens may not be redistributed)."""

from __future__ import annotations

from pathlib import Path

# (user, movie, rating, time); user attributes (gender, age, occupation); movies (title, genres)
MOVIES = {
    "1": ("Toy Story (1995)", ("Animation", "Children's", "Comedy")),
    "2": ("GoldenEye (1995)", ("Action", "Adventure", "Thriller")),
    "3": ("Heat (1995)", ("Action", "Crime", "Thriller")),
    "4": ("Sabrina (1995)", ("Comedy", "Romance")),
    "5": ("Café Society (1995)", ("Drama",)),
    "6": ("Alien (1979)", ("Horror", "Sci-Fi")),
}
USERS = {"1": ("F", "25", "12"), "2": ("M", "35", "7"), "3": ("F", "18", "4"), "4": ("M", "25", "12"),
         "5": ("F", "50", "1"), "6": ("M", "18", "4")}
RATINGS = [
    (u, m, float((int(u) * 7 + int(m) * 3) % 5 + 1), 978300000 + int(u) * 1000 + step * 10)
    for u in USERS for step, m in enumerate(sorted(MOVIES, key=lambda m: (int(m) * int(u)) % 7))
]


def write_100k(path: Path) -> Path:
    from fedshield.workloads.movielens import GENRES_100K

    path.mkdir(parents=True, exist_ok=True)
    with open(path / "u.item", "w", encoding="latin-1") as fh:
        for mid, (title, genres) in MOVIES.items():
            flags = "|".join("1" if g in genres else "0" for g in GENRES_100K)
            fh.write(f"{mid}|{title}|01-Jan-1995||http://x|{flags}\n")
    (path / "u.data").write_text("".join(f"{u}\t{m}\t{int(r)}\t{t}\n" for u, m, r, t in RATINGS), encoding="latin-1")
    (path / "u.user").write_text("".join(f"{u}|{a}|{g}|{o}|0211{u}\n" for u, (g, a, o) in USERS.items()), encoding="latin-1")
    return path


def write_1m(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "movies.dat").write_text("".join(f"{m}::{t}::{'|'.join(g)}\n" for m, (t, g) in MOVIES.items()), encoding="latin-1")
    (path / "ratings.dat").write_text("".join(f"{u}::{m}::{int(r)}::{t}\n" for u, m, r, t in RATINGS), encoding="latin-1")
    (path / "users.dat").write_text("".join(f"{u}::{g}::{a}::{o}::0211{u}\n" for u, (g, a, o) in USERS.items()), encoding="latin-1")
    return path


def write_latest(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    rows = [f'{m},"{t}",{"|".join(g)}' for m, (t, g) in MOVIES.items()]
    (path / "movies.csv").write_text("movieId,title,genres\n" + "\n".join(rows) + "\n", encoding="utf-8")
    (path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},{r},{t}\n" for u, m, r, t in RATINGS),
                                      encoding="utf-8")
    return path


WRITERS = {"100k": write_100k, "1m": write_1m, "latest": write_latest}
