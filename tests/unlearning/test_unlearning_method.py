"""E2URec's pure parts: the forgetting teacher, the student loss, the forget split."""

import math

import numpy as np
import pytest
import torch

from fedshield.unlearning import answer_kl, forget_split, forgetting_teacher, jensen_shannon, student_loss
from fedshield.workloads.recommendation import Example, build_examples, synthetic_silos


def test_forgetting_teacher_pushes_down_only_what_the_augmented_model_raised():
    v = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    v_aug = torch.tensor([[2.5, -3.0, 0.5], [0.25, 1.0, 4.0]])
    # rises: 1.5, -, 0 | 0.25, -, 5  -> minus 2x each rise; falls and ties unchanged
    expected = torch.tensor([[-2.0, -2.0, 0.5], [-0.5, 3.0, -11.0]])
    assert torch.equal(forgetting_teacher(v, v_aug), expected)
    assert torch.equal(forgetting_teacher(v, v_aug, alpha=0.5), torch.tensor([[0.25, -2.0, 0.5], [-0.125, 3.0, -3.5]]))
    assert torch.equal(forgetting_teacher(v, v), v)  # no extra exposure: the teacher is the current model
    with pytest.raises(ValueError, match="shapes"):
        forgetting_teacher(v, v_aug[:, :2])


def test_answer_kl_on_hand_made_distributions():
    # teacher (0.8, 0.2), student (0.5, 0.5): KL = 0.8 ln 1.6 + 0.2 ln 0.4
    teacher = torch.log(torch.tensor([[0.8, 0.2]]))
    student = torch.zeros(1, 2)
    assert answer_kl(teacher, student).item() == pytest.approx(0.8 * math.log(1.6) + 0.2 * math.log(0.4), rel=1e-6)
    assert answer_kl(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)
    # logits, not probabilities: a shift of both answers changes nothing
    assert answer_kl(teacher + 3.0, student - 1.0).item() == pytest.approx(answer_kl(teacher, student).item(), rel=1e-6)


def test_student_loss_weighs_forget_and_retain_terms():
    f_teacher, f_student = torch.log(torch.tensor([[0.8, 0.2]])), torch.zeros(1, 2)
    r_teacher, r_student = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]])), torch.log(torch.tensor([[0.25, 0.75], [0.9, 0.1]]))
    labels = torch.tensor([1, 0])  # yes (column 0), no (column 1)
    kl_f = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    kl_r = (0.5 * math.log(2.0) + 0.5 * math.log(0.5 / 0.75) + 0.0) / 2
    ce = (-math.log(0.25) - math.log(0.1)) / 2
    assert student_loss(0.4, f_teacher, f_student).item() == pytest.approx(0.4 * kl_f, rel=1e-6)  # forget-only epoch
    full = student_loss(0.4, f_teacher, f_student, r_teacher, r_student, labels).item()
    assert full == pytest.approx(0.4 * kl_f + 0.6 * (kl_r + ce), rel=1e-6)
    with pytest.raises(ValueError, match="teacher"):
        student_loss(0.4, f_teacher, f_student, None, r_student, labels)


def test_jensen_shannon_of_answer_distributions():
    assert jensen_shannon([0.3, 0.9], [0.3, 0.9]) == pytest.approx(0.0, abs=1e-12)
    assert jensen_shannon([1.0], [0.0]) == pytest.approx(math.log(2))
    p, q = 0.8, 0.4
    m = (p + q) / 2
    half = lambda a: a * math.log(a / m) + (1 - a) * math.log((1 - a) / (1 - m))  # noqa: E731
    assert jensen_shannon([p], [q]) == pytest.approx((half(p) + half(q)) / 2)
    assert jensen_shannon([p, q], [q, p]) == pytest.approx(jensen_shannon([p], [q]))


@pytest.fixture(scope="module")
def records():
    return build_examples(synthetic_silos(["a"], seed=0)["a"])


def test_forget_split_takes_all_records_of_a_fraction_of_users(records):
    users = {e.user for e in records}
    split = forget_split(records, fraction=0.2, seed=1)
    assert len(split.users) == round(0.2 * len(users))
    assert {e.user for e in split.forget} == set(split.users)
    assert not {e.user for e in split.retain} & set(split.users)  # every record of a user is on one side
    assert sorted(split.forget + split.retain, key=records.index) == records
    assert [records.index(e) for e in split.retain] == sorted(records.index(e) for e in split.retain)  # order kept
    assert forget_split(records, fraction=0.2, seed=1) == split  # deterministic
    assert forget_split(records, fraction=0.2, seed=2).users != split.users
    assert len(split.users_digest) == 64


def test_forget_split_by_request_and_refusals(records):
    split = forget_split(records, users=["a-u3", "a-u7", "someone-else"])
    assert set(split.users) == {"a-u3", "a-u7", "someone-else"}
    assert {e.user for e in split.forget} == {"a-u3", "a-u7"} and len(split.forget) == 18  # 9 records each
    with pytest.raises(ValueError, match="exactly one"):
        forget_split(records, users=["a-u3"], fraction=0.2)
    with pytest.raises(ValueError, match="empty"):
        forget_split(records, users=[])
    with pytest.raises(ValueError, match="user id"):
        forget_split([Example("p", 1)], fraction=0.5)


def test_retrain_data_files_load_back_through_the_silos_path_without_the_forgotten_users(tmp_path):
    from fedshield.workloads.recommendation import load_movielens, write_movielens

    rows = synthetic_silos(["a"], seed=0, users=[4])["a"]
    write_movielens([it for it in rows if it.user != "a-u1"], tmp_path)
    loaded = load_movielens(tmp_path)
    assert sorted(loaded, key=lambda it: (it.user, it.time)) == sorted((it for it in rows if it.user != "a-u1"),
                                                                      key=lambda it: (it.user, it.time))
    assert build_examples(loaded) == [e for e in build_examples(rows) if e.user != "a-u1"]


def test_epoch_batches_cover_every_record_once_per_epoch():
    from fedshield.unlearning.batches import epoch_batches, steps_per_epoch

    batches = epoch_batches(10, 4, seed=0)
    epoch = [next(batches) for _ in range(steps_per_epoch(10, 4))]
    assert [len(b) for b in epoch] == [4, 4, 2] and sorted(sum(epoch, [])) == list(range(10))
    again = epoch_batches(10, 4, seed=0)
    assert [next(again) for _ in range(3)] == epoch  # seeded
    assert sorted(sum((next(batches) for _ in range(3)), [])) == list(range(10))  # the next epoch too


def test_task_metrics_are_auc_accuracy_and_logloss():
    from sklearn.metrics import log_loss as sk_log_loss
    from sklearn.metrics import roc_auc_score

    from fedshield.unlearning.evaluate import task_metrics

    labels = np.array([1, 0, 1, 1, 0, 0])
    yes = np.array([0.9, 0.2, 0.4, 0.7, 0.6, 0.1])
    m = task_metrics(labels, yes)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, yes))
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["logloss"] == pytest.approx(sk_log_loss(labels, yes), rel=1e-6)


def test_symmetric_kl_and_output_l2_of_full_distributions():
    import torch

    from fedshield.unlearning.evaluate import output_l2, symmetric_kl

    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=torch.float64)
    q = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=torch.float64)
    by_hand = float(sum((p[0] - q[0]) * torch.log(p[0] / q[0]))) / 2  # row 2 is identical
    assert symmetric_kl(p, q) == pytest.approx(by_hand) and symmetric_kl(p, q) == pytest.approx(symmetric_kl(q, p))
    assert symmetric_kl(p, p) == 0.0
    assert output_l2(p, q) == pytest.approx(float(torch.linalg.vector_norm(p[0] - q[0])) / 2)


def test_delta_weight_l2_measures_the_weight_change_not_the_factors():
    import torch

    from fedshield.unlearning.evaluate import delta_weight_l2

    gen = torch.Generator().manual_seed(0)
    a_mat, b_mat = torch.randn(2, 5, generator=gen), torch.randn(4, 2, generator=gen)
    name = "base_model.model.layers.0.q_proj.lora_{}.default.weight"
    one = {name.format("A"): a_mat, name.format("B"): b_mat}
    rescaled = {name.format("A"): 2 * a_mat, name.format("B"): b_mat / 2}  # the same B @ A, other factors
    assert delta_weight_l2(one, rescaled, scale=2.0) == pytest.approx(0.0, abs=1e-9)
    zero = {name.format("A"): a_mat, name.format("B"): torch.zeros_like(b_mat)}
    assert delta_weight_l2(one, zero, scale=2.0) == pytest.approx(float(torch.linalg.matrix_norm(2.0 * b_mat @ a_mat)))


def test_membership_advantage_is_the_best_threshold_tpr_minus_fpr():
    from fedshield.unlearning.evaluate import membership_advantage, record_losses

    assert membership_advantage(np.array([0.1, 0.2]), np.array([0.5, 0.9])) == 1.0
    assert membership_advantage(np.array([0.5, 0.9]), np.array([0.1, 0.2])) == 0.0
    rng = np.random.default_rng(0)
    same = membership_advantage(rng.exponential(size=4000), rng.exponential(size=4000))
    assert same < 0.05
    members, others = np.array([0.1, 0.3, 0.6]), np.array([0.2, 0.5, 0.7, 0.8])
    # threshold 0.3: TPR 2/3, FPR 1/4; threshold 0.6: TPR 1, FPR 1/2 -> best 1/2... and 0.1: 1/3 - 0
    assert membership_advantage(members, others) == pytest.approx(max(2 / 3 - 1 / 4, 1 - 2 / 4, 1 / 3))
    assert np.allclose(record_losses(np.array([1, 0]), np.array([0.8, 0.8])), [-np.log(0.8), -np.log(0.2)])


def test_membership_auc_is_sklearns_auc_of_the_negated_losses():
    from sklearn.metrics import roc_auc_score

    from fedshield.unlearning.evaluate import membership_auc

    rng = np.random.default_rng(0)
    members, others = rng.exponential(0.8, 150), np.round(rng.exponential(1.0, 200), 1)
    expected = roc_auc_score(np.r_[np.ones(150), np.zeros(200)], -np.r_[members, others])
    assert membership_auc(members, others) == pytest.approx(expected, abs=1e-12)
    assert membership_auc(np.array([0.1, 0.2]), np.array([0.5, 0.9])) == 1.0
    assert membership_auc(np.array([0.5]), np.array([0.5])) == 0.5
    with pytest.raises(ValueError, match="both sets"):
        membership_auc(np.array([]), np.array([0.5]))


def test_user_membership_auc_ranks_users_by_their_mean_record_loss():
    from fedshield.unlearning.evaluate import membership_auc, user_mean_losses

    losses = np.array([0.1, 0.5, 0.9, 0.3, 0.2, 0.7])
    users = ["a", "a", "b", "b", "c", "c"]
    means = user_mean_losses(losses, users)
    assert list(means) == pytest.approx([0.3, 0.6, 0.45])  # users in sorted order
    # members a (0.3) and b (0.6) against the never-seen user c (0.45): one of two pairs ranked right
    assert membership_auc(user_mean_losses(losses[:4], users[:4]), user_mean_losses(losses[4:], users[4:])) == 0.5
    # one record per user: the record-level attack
    assert list(user_mean_losses(np.array([0.4, 0.2]), ["x", "y"])) == [0.4, 0.2]
    with pytest.raises(ValueError, match="one user per loss"):
        user_mean_losses(np.array([0.1, 0.2]), ["a"])
