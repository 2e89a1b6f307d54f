"""MovieLens 100K, 1M and latest read from small files in each layout; the per-user temporal split; clear errors."""

import pytest
from support.movielens_files import MOVIES, RATINGS, USERS, WRITERS

from fedshield.workloads import movielens
from fedshield.workloads.base import DataError
from fedshield.workloads.movielens import Movie, Rating, User, temporal_split
from fedshield.workloads.recommendation import Interaction, load_movielens, temporal_examples


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_each_release_reads_as_the_same_ratings_movies_and_genres(tmp_path, fmt):
    data = movielens.load(WRITERS[fmt](tmp_path / fmt))
    assert data.format == fmt
    assert data.ratings == [Rating(u, m, r, t) for u, m, r, t in RATINGS]
    assert data.movies == {m: Movie(m, title, genres) for m, (title, genres) in MOVIES.items()}
    assert data.movies["5"].title == "Café Society (1995)"  # latin-1 in 100K/1M, UTF-8 in latest
    if fmt == "latest":
        assert data.users == {}
    else:
        assert data.users == {u: User(u, g, a, o, f"0211{u}") for u, (g, a, o) in USERS.items()}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_load_movielens_gives_the_same_interactions_for_every_release(tmp_path, fmt):
    rows = load_movielens(WRITERS[fmt](tmp_path / fmt))
    assert rows[0] == Interaction(RATINGS[0][0], MOVIES[RATINGS[0][1]][0].lower(), RATINGS[0][2], RATINGS[0][3])
    assert len(rows) == len(RATINGS)


def test_a_written_dataset_reads_back_with_genres_and_users(tmp_path):
    data = movielens.load(WRITERS["1m"](tmp_path / "src"))
    again = movielens.load(movielens.write(data, tmp_path / "out"))
    assert again.format == "latest" and again.ratings == data.ratings and again.movies == data.movies and again.users == data.users


def test_temporal_split_holds_out_each_users_last_ratings():
    train, held = temporal_split([Rating(*r) for r in RATINGS], holdout=2)
    assert len(held) == 2 * len(USERS) and len(train) + len(held) == len(RATINGS)
    for user in USERS:
        past = [r.time for r in train if r.user == user]
        future = [r.time for r in held if r.user == user]
        assert len(future) == 2 and max(past) <= min(future)  # nothing from a user's future is in training
    few = [Rating("a", "1", 5, 1), Rating("b", "1", 5, 1), Rating("b", "2", 1, 2)]
    assert temporal_split(few, holdout=1) == ([few[0], few[1]], [few[2]])
    with pytest.raises(ValueError, match="at least 1"):
        temporal_split(few, holdout=0)


def test_temporal_examples_train_on_the_past_and_validate_on_the_last_interactions():
    rows = [Interaction("u", f"m{t}", 5.0 if t % 2 else 1.0, t) for t in range(6)] + [Interaction("v", "x", 5.0, 0)]
    train, val = temporal_examples(rows, holdout=2, history=3)
    held_items = {"m4", "m5"}
    assert not any(item in e.prompt for e in train for item in held_items)  # no future item in any training prompt
    assert [e.prompt.rsplit(" ", 1)[-1] for e in val] == ["m4", "m5"]
    assert val[1].prompt == "the user liked m3 and disliked m2 , m4 . will the user like m5" and val[1].label == 1
    assert len(train) == 3  # targets m1..m3 of u; v has a single interaction and no history


def test_missing_files_name_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="u.data"):
        load_movielens(tmp_path)
    (tmp_path / "ratings.dat").write_text("1::1::5::1\n")
    with pytest.raises(FileNotFoundError, match="movies.dat is missing"):
        movielens.load(tmp_path)


def test_a_malformed_line_names_the_file_and_the_line(tmp_path):
    path = WRITERS["1m"](tmp_path / "m")
    (path / "ratings.dat").write_text("1::1::5::978300760\n1::2::978300761\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"ratings\.dat:2: expected 4 fields separated by '::', got 3"):
        movielens.load(path)
    (path / "ratings.dat").write_text("1::1::five::978300760\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"ratings\.dat:1: rating 'five' and timestamp '978300760' must be numbers"):
        movielens.load(path)


def test_latest_csv_errors_name_the_file(tmp_path):
    path = WRITERS["latest"](tmp_path / "l")
    (path / "ratings.csv").write_text("userId,movieId,stars,timestamp\n1,1,5,1\n")
    with pytest.raises(DataError, match=r"ratings\.csv:1: header lacks rating"):
        movielens.load(path)
    (path / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\n1,1,5,1\n2,\xff,5,1\n")
    with pytest.raises(DataError, match=r"ratings\.csv:3: not UTF-8 text"):
        movielens.load(path)
    (path / "ratings.csv").write_text("")
    with pytest.raises(DataError, match=r"ratings\.csv: empty file"):
        movielens.load(path)
    (path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1\n")
    with pytest.raises(DataError, match=r"ratings\.csv:2: expected the columns"):
        movielens.load(path)
