"""AUC, log-loss and NDCG@k against scikit-learn's reference implementations, random and tied cases."""

import numpy as np
import pytest
from sklearn import metrics

from fedshield.workloads.scoring import auc, grouped_ndcg_at_k, log_loss, ndcg_at_k


@pytest.mark.parametrize("seed", range(20))
def test_auc_equals_sklearn_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    labels = rng.integers(0, 2, n)
    labels[0], labels[-1] = 0, 1  # both classes present
    continuous = rng.random(n)
    tied = np.round(rng.random(n), 1)  # about 11 distinct values: many ties
    for scores in (continuous, tied, np.zeros(n)):
        assert auc(labels, scores) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)


def test_auc_is_one_half_when_a_class_is_absent():
    assert auc(np.ones(5), np.arange(5)) == 0.5 and auc(np.zeros(5), np.arange(5)) == 0.5


@pytest.mark.parametrize("seed", range(10))
def test_log_loss_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 100)
    labels[:2] = [0, 1]
    probs = rng.random(100)
    probs[:4] = [0.0, 1.0, 1e-12, 1 - 1e-12]  # clipped identically (eps 1e-7)
    assert log_loss(labels, probs) == pytest.approx(metrics.log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7)), rel=1e-12)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("k", [1, 5, 10])
def test_ndcg_at_k_equals_sklearn_with_graded_relevance_and_ties(seed, k):
    rng = np.random.default_rng(seed)
    users, items = int(rng.integers(1, 8)), int(rng.integers(2, 30))
    relevance = rng.integers(0, 4, (users, items)).astype(float)
    relevance[:, 0] = 1.0  # every user has something relevant
    for scores in (rng.random((users, items)), np.round(rng.random((users, items)), 1)):
        assert ndcg_at_k(relevance, scores, k) == pytest.approx(metrics.ndcg_score(relevance, scores, k=k), abs=1e-12)


def test_ndcg_refuses_mismatched_shapes_and_bad_k():
    with pytest.raises(ValueError, match="shape"):
        ndcg_at_k(np.ones((2, 3)), np.ones((2, 4)), 2)
    with pytest.raises(ValueError, match="k must"):
        ndcg_at_k(np.ones((1, 3)), np.ones((1, 3)), 0)


@pytest.mark.parametrize("seed", range(10))
def test_grouped_ndcg_is_the_mean_of_each_users_sklearn_ndcg(seed):
    rng = np.random.default_rng(seed)
    users = [f"u{i}" for i in rng.integers(0, 6, 60)]
    relevance, scores = rng.integers(0, 2, 60).astype(float), np.round(rng.random(60), 1)
    expected = []
    for user in sorted(set(users)):
        idx = [i for i, u in enumerate(users) if u == user]
        if len(idx) >= 2 and relevance[idx].max() > 0:
            expected.append(metrics.ndcg_score(relevance[idx][None], scores[idx][None], k=5))
    assert grouped_ndcg_at_k(users, relevance, scores, 5) == pytest.approx(float(np.mean(expected)), abs=1e-12)


def test_grouped_ndcg_skips_users_that_rank_nothing():
    # u0 has one item, u1 no relevant item: only u2 counts, and its ranking is perfect
    assert grouped_ndcg_at_k(["u0", "u1", "u1", "u2", "u2"], np.array([1, 0, 0, 0, 1]), np.array([.1, .5, .6, .2, .9]), 5) == 1.0
    assert grouped_ndcg_at_k(["u0", "u1", "u1"], np.array([1, 0, 0]), np.array([.1, .5, .6]), 5) is None
    with pytest.raises(ValueError, match="differ in length"):
        grouped_ndcg_at_k(["u0"], np.ones(2), np.ones(2), 5)
