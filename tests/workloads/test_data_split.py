"""`fedshield data split`: one MovieLens dataset into per-silo folders by user hash, Dirichlet over genres, or a user attribute."""

import json
import subprocess
import sys
from collections import Counter

import pytest
from support.movielens_files import RATINGS, USERS, WRITERS

from fedshield.cli import main
from fedshield.workloads import movielens
from fedshield.workloads.partition import by_dirichlet, by_hash, dominant_genre, silo_names
from fedshield.workloads.recommendation import load_movielens


def _split(capsys, *argv) -> dict:
    assert main(["data", "split", *map(str, argv)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_split_by_user_writes_folders_load_movielens_reads_back(tmp_path, capsys, fmt):
    src = WRITERS[fmt](tmp_path / "src")
    manifest = _split(capsys, src, "--out", tmp_path / "out", "--by", "user", "--silos", "a,b")
    assert manifest["format"] == fmt and set(manifest["silos"]) == {"a", "b"}
    seen = {}
    for silo in ("a", "b"):
        rows = load_movielens(tmp_path / "out" / silo)
        assert len(rows) == manifest["silos"][silo]["ratings"]
        for r in rows:
            assert seen.setdefault(r.user, silo) == silo  # a user's whole history is in one silo
    assert sum(m["ratings"] for m in manifest["silos"].values()) == len(RATINGS) and set(seen) == set(USERS)
    assert json.loads((tmp_path / "out" / "split.json").read_text()) == manifest
    genres = movielens.load(tmp_path / "out" / "a").movies
    assert all(m.genres for m in genres.values())  # genres kept


def test_split_by_attribute_makes_one_silo_per_value(tmp_path, capsys):
    src = WRITERS["100k"](tmp_path / "src")
    manifest = _split(capsys, src, "--out", tmp_path / "out", "--by", "attribute", "--attribute", "gender")
    assert manifest["silos"] == {"gender-f": {"users": 3, "ratings": 18}, "gender-m": {"users": 3, "ratings": 18}}
    women = movielens.load(tmp_path / "out" / "gender-f")
    assert {u.gender for u in women.users.values()} == {"F"} and {r.user for r in women.ratings} == {"1", "3", "5"}
    manifest = _split(capsys, tmp_path / "out" / "gender-f", "--out", tmp_path / "again", "--by", "attribute",
                      "--attribute", "age")  # users.csv travels with the split, so it splits again
    assert set(manifest["silos"]) == {"age-18", "age-25", "age-50"}


def test_split_by_genre_is_seeded(tmp_path, capsys):
    src = WRITERS["1m"](tmp_path / "src")
    one = _split(capsys, src, "--out", tmp_path / "one", "--by", "genre", "--alpha", "0.3", "--seed", "4", "--silos", "3")
    two = _split(capsys, src, "--out", tmp_path / "two", "--by", "genre", "--alpha", "0.3", "--seed", "4", "--silos", "3")
    assert one["silos"] == two["silos"] and set(one["silos"]) == {"silo-1", "silo-2", "silo-3"} and one["alpha"] == 0.3
    for silo in one["silos"]:
        assert (tmp_path / "one" / silo / "ratings.csv").read_text() == (tmp_path / "two" / silo / "ratings.csv").read_text()


def test_dirichlet_with_small_alpha_skews_each_class_towards_few_silos():
    classes = {f"u{i}": g for i, g in enumerate(["drama"] * 300 + ["comedy"] * 300 + ["action"] * 300)}
    silos = ["a", "b", "c"]
    skewed = by_dirichlet(classes, silos, alpha=0.1, seed=0)
    even = by_dirichlet(classes, silos, alpha=100.0, seed=0)
    assert set(skewed) == set(classes) == set(even)

    def top_share(mapping):
        return min(max(Counter(mapping[u] for u, c in classes.items() if c == g).values()) / 300 for g in set(classes.values()))

    assert top_share(skewed) > 0.6 and top_share(even) < 0.45


def test_hash_split_is_stable_and_dominant_genre_counts_genres():
    users = [str(i) for i in range(200)]
    assert by_hash(users, ["a", "b"]) == by_hash(list(reversed(users)), ["a", "b"])
    assert 70 < Counter(by_hash(users, ["a", "b"]).values())["a"] < 130
    data = movielens.MovieLens("latest", [movielens.Rating("u", "1", 5, 1), movielens.Rating("u", "2", 5, 2)],
                               {"1": movielens.Movie("1", "x", ("Drama", "Comedy")), "2": movielens.Movie("2", "y", ("Drama",))})
    assert dominant_genre(data) == {"u": "Drama"}
    assert silo_names("2") == ["silo-1", "silo-2"] and silo_names("x, y") == ["x", "y"]


def test_errors_name_the_problem(tmp_path, capsys):
    assert main(["data", "split", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "holds no MovieLens files" in capsys.readouterr().err
    latest = WRITERS["latest"](tmp_path / "latest")
    assert main(["data", "split", str(latest), "--out", str(tmp_path / "o"), "--by", "attribute"]) == 2
    assert "needs a users file" in capsys.readouterr().err
    bad = WRITERS["1m"](tmp_path / "bad")
    (bad / "users.dat").write_text("1::F::25\n", encoding="latin-1")
    assert main(["data", "split", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "users.dat:1: expected 5 fields" in capsys.readouterr().err
    assert main(["data", "split", str(latest), "--out", str(tmp_path / "o"), "--silos", "a,a"]) == 2
    assert "distinct" in capsys.readouterr().err
    assert main(["data", "split", str(latest), "--out", str(tmp_path / "o"), "--silos", "a,../b"]) == 2
    assert "folder names" in capsys.readouterr().err
    assert main(["data", "split", str(latest), "--out", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    assert main(["data", "split", str(latest), "--out", str(tmp_path / "o")]) == 2
    assert "already holds a split" in capsys.readouterr().err
    assert main(["data", "split", str(latest), "--out", str(tmp_path / "o"), "--force", "--silos", "x,y"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["split.json", "x", "y"]  # the earlier silos are gone


def test_the_command_runs_as_python_m_fedshield(tmp_path):
    src = WRITERS["100k"](tmp_path / "src")
    done = subprocess.run([sys.executable, "-m", "fedshield", "data", "split", str(src), "--out", str(tmp_path / "out"),
                           "--silos", "2"], capture_output=True, text=True, check=True)
    assert set(json.loads(done.stdout)["silos"]) == {"silo-1", "silo-2"}
