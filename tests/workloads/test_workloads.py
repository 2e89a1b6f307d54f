import numpy as np
import pytest

from fedshield.workloads.recommendation import (
    GENRES,
    Interaction,
    build_examples,
    catalog,
    load_movielens,
    prompt_for,
    skewed_silos,
    split_examples,
    synthetic_silos,
)
from fedshield.workloads.scoring import auc, log_loss


def test_prompt_names_liked_disliked_and_target():
    text = prompt_for(["a b", "c d"], ["e f"], "g h")
    assert text == "the user liked a b , c d and disliked e f . will the user like g h"


def test_examples_use_only_earlier_interactions_of_the_same_user():
    rows = [Interaction("u1", "x", 5, 1), Interaction("u1", "y", 1, 2), Interaction("u1", "z", 4, 3), Interaction("u2", "w", 5, 1)]
    examples = build_examples(rows, history=5)
    assert [e.label for e in examples] == [0, 1]
    assert examples[1].prompt == prompt_for(["x"], ["y"], "z")


def test_synthetic_silos_are_seeded_and_non_iid():
    silos = ["a", "b", "c"]
    data = synthetic_silos(silos, seed=3)
    assert data == synthetic_silos(silos, seed=3)
    sizes = [len(data[s]) for s in silos]
    assert len(set(sizes)) == 3  # silos differ in size
    liked_share = []
    for s in silos:
        liked = [it.item.split()[-1] for it in data[s] if it.rating >= 4]
        liked_share.append(np.array([liked.count(g) for g in GENRES]) / len(liked))
    assert max(np.abs(liked_share[0] - liked_share[1]).max(), np.abs(liked_share[0] - liked_share[2]).max()) > 0.15
    assert all(it.item in catalog(seed=3) for it in data["a"])


def test_fit_probability_sets_the_share_of_whims_and_keeps_the_default_draws():
    silos = ["a", "b"]
    assert synthetic_silos(silos, seed=1) == synthetic_silos(silos, seed=1, fit_probability=0.9)
    whims = synthetic_silos(silos, seed=1, users=[200, 200], fit_probability=0.6)
    default = synthetic_silos(silos, seed=1, users=[200, 200])
    assert [(it.user, it.item) for it in whims["a"]] == [(it.user, it.item) for it in default["a"]]  # same users and items
    # one coin u per rating in both: both follow the genre when u < 0.6, both are whims when u >= 0.9, so P(same side) = 0.7
    agree = np.mean([(w.rating >= 4) == (d.rating >= 4) for s in silos for w, d in zip(whims[s], default[s], strict=True)])
    assert 0.65 < agree < 0.75
    with pytest.raises(ValueError, match="fit_probability"):
        synthetic_silos(silos, fit_probability=0.4)


def test_split_is_seeded_and_disjoint():
    examples = build_examples(synthetic_silos(["a"], seed=0)["a"])
    train, val = split_examples(examples, 0.2, seed=1)
    assert len(val) == round(len(examples) * 0.2) and len(train) + len(val) == len(examples)
    assert (train, val) == split_examples(examples, 0.2, seed=1)


def test_movielens_100k_format(tmp_path):
    (tmp_path / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||x\n2|GoldenEye (1995)|01-Jan-1995||x\n", encoding="latin-1")
    (tmp_path / "u.data").write_text("196\t1\t5\t881250949\n196\t2\t2\t881250950\n")
    rows = load_movielens(tmp_path)
    assert rows == [Interaction("196", "toy story (1995)", 5.0, 881250949), Interaction("196", "goldeneye (1995)", 2.0, 881250950)]


def test_movielens_csv_format(tmp_path):
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Animation\n")
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n7,1,4.5,964982703\n")
    assert load_movielens(tmp_path) == [Interaction("7", "toy story (1995)", 4.5, 964982703)]


def test_missing_movielens_files_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="u.data"):
        load_movielens(tmp_path)


def test_auc_and_log_loss_on_known_values():
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert auc([1, 1], [0.2, 0.3]) == 0.5
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))


def test_skewed_silos_have_disjoint_items_their_own_taste_and_are_seeded():
    names = ["a", "b", "c", "d", "e"]
    data = skewed_silos(names, seed=4)
    assert data == skewed_silos(names, seed=4) and data != skewed_silos(names, seed=5)
    items = {s: {r.item for r in rows} for s, rows in data.items()}
    assert all(items[x].isdisjoint(items[y]) for x in names for y in names if x < y)  # item skew
    assert [len({r.user for r in rows}) for rows in data.values()] == [int(40 * 0.6**i) + 12 for i in range(5)]
    liked = {s: np.array([sum(r.item.endswith(g) and r.rating >= 4 for r in rows) for g in GENRES], float) for s, rows in data.items()}
    shares = {s: v / v.sum() for s, v in liked.items()}
    assert max(np.abs(shares[x] - shares[y]).sum() for x in names for y in names) > 0.5  # label skew: tastes differ
    with pytest.raises(ValueError, match="fewer than 16 per silo"):
        skewed_silos([f"s{i}" for i in range(11)], seed=0)
