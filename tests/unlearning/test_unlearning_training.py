"""E2URec and NegGrad on a tiny model through the real PEFT + DeepSpeed path, and folding into the layout."""

import numpy as np
import pytest
import torch

from fedshield.config import LoraSpec, TrainingSpec
from fedshield.learning.model import build_tiny_base, load_base, with_lora
from fedshield.unlearning import (
    UnlearningSpec,
    answer_cross_entropy,
    answer_kl,
    fold_into_adapter,
    fold_module,
    forget_split,
    forgetting_teacher,
    neg_grad,
)
from fedshield.unlearning.augment import augmented_logits
from fedshield.unlearning.current import add_lora, answer_logits, current_model
from fedshield.unlearning.engine import unlearning_engine
from fedshield.unlearning.student import train_student
from fedshield.updates import VectorLayout, lora_parameters
from fedshield.workloads.recommendation import build_examples, catalog, prompt_for, synthetic_silos

pytestmark = pytest.mark.slow
LORA = LoraSpec(r=4, alpha=8, target_modules=("q_proj", "v_proj", "lm_head"))
TRAINING = TrainingSpec(batch_size=8)
PRIVATE = ("*.layers.0.*",)


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    torch.set_num_threads(2)
    return build_tiny_base(tmp_path_factory.mktemp("tiny"), catalog() + [prompt_for(["x"], ["y"], "z")], hidden=32)


@pytest.fixture(scope="module")
def adapter(base_path):
    """A stand-in for a federated adapter: seeded LoRA with non-zero B (rank r, every module)."""
    base, _ = load_base(base_path)
    model = with_lora(base, LORA.r, LORA.alpha, 0.0, LORA.target_modules, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in lora_parameters(model).items():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return {n: p.detach().clone() for n, p in lora_parameters(model).items()}


@pytest.fixture(scope="module")
def split():
    records = build_examples(synthetic_silos(["a"], seed=0, users=[20])["a"])
    return forget_split(records, fraction=0.2, seed=0)


def test_student_moves_the_answer_distribution_on_the_forget_set_toward_the_teacher(base_path, adapter, split):
    spec = UnlearningSpec(steps=10, augment_steps=6, batch_size=8, rank=4, lora_alpha=8, learning_rate=3e-3, augment_learning_rate=1e-2)
    model, tokenizer = current_model(base_path, LORA, adapter)
    v_forget, v_retain = answer_logits(model, tokenizer, split.forget), answer_logits(model, tokenizer, split.retain)
    v_aug, _ = augmented_logits(model, tokenizer, split.forget, spec, LORA, TRAINING)
    assert torch.equal(answer_logits(model, tokenizer, split.forget), v_forget)  # the augmented LoRA is gone again
    teacher = forgetting_teacher(v_forget, v_aug, spec.alpha)
    before = answer_kl(teacher, v_forget).item()
    assert before > 1e-3  # the augmented model moved, so the teacher differs from the current model
    student = add_lora(model, spec, LORA, seed=0)
    engine = unlearning_engine(student, TRAINING, spec.learning_rate, spec.batch_size)
    losses, forget_only = train_student(engine, tokenizer, split.forget, split.retain, teacher, v_retain, spec)
    assert forget_only == -(-len(split.forget) // spec.batch_size) and len(losses) == spec.steps
    after = answer_kl(teacher, answer_logits(student, tokenizer, split.forget)).item()
    assert after < 0.5 * before


def test_neggrad_raises_the_loss_on_the_forget_set(base_path, adapter, split):
    layout = VectorLayout.from_tensors(adapter, PRIVATE)
    spec = UnlearningSpec(steps=6, batch_size=8, rank=4, lora_alpha=8, learning_rate=5e-3)
    result = neg_grad(base_path, LORA, adapter, layout, split.forget, spec, TRAINING)
    labels = torch.tensor([e.label for e in split.forget])

    def forget_ce(tensors):
        model, tokenizer = current_model(base_path, LORA, tensors)
        return answer_cross_entropy(answer_logits(model, tokenizer, split.forget), labels).item()

    assert forget_ce(result.adapter.tensors(layout)) > forget_ce(adapter) + 0.05
    assert result.shared.shape == (layout.size,) and len(result.losses) == spec.steps


def test_fold_is_exact_when_the_ranks_fit_and_drops_the_smallest_directions_otherwise():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 16, generator=gen), torch.randn(12, 4, generator=gen)
    b[:, 2:] = 0  # the adapter uses 2 of its 4 directions
    a_new, b_new = torch.randn(2, 16, generator=gen), torch.randn(12, 2, generator=gen)
    a2, b2, err = fold_module(a, b, 2.0, a_new, b_new, 0.5)
    target = 2.0 * b @ a + 0.5 * b_new @ a_new
    assert a2.shape == a.shape and b2.shape == b.shape and err == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(2.0 * b2 @ a2, target, atol=1e-5)
    b[:, 2:] = torch.randn(12, 2, generator=gen)  # now rank 6 > 4: the best rank-4 approximation
    a2, b2, err = fold_module(a, b, 2.0, a_new, b_new, 0.5)
    s = torch.linalg.svdvals((2.0 * b @ a + 0.5 * b_new @ a_new).double())
    assert torch.allclose((2.0 * b2 @ a2).double(), _truncate(2.0 * b @ a + 0.5 * b_new @ a_new, 4), atol=1e-4)
    assert err == pytest.approx(float(torch.sqrt((s[4:] ** 2).sum() / (s**2).sum())), rel=1e-5)


def _truncate(m, r):
    u, s, vh = torch.linalg.svd(m.double())
    return u[:, :r] @ torch.diag(s[:r]) @ vh[:r]


def test_folded_adapter_round_trips_through_the_layout_and_equals_the_student(base_path, adapter):
    # An adapter using half its rank per module, and a student of that other half: the fold is exact.
    half = {n: (t.clone() if "lora_A" in n else torch.cat([t[:, :2], torch.zeros_like(t[:, 2:])], dim=1)) for n, t in adapter.items()}
    layout = VectorLayout.from_tensors(half, PRIVATE)
    model, tokenizer = current_model(base_path, LORA, half)
    prompts = build_examples(synthetic_silos(["a"], seed=1, users=[3])["a"])
    current = answer_logits(model, tokenizer, prompts)
    spec = UnlearningSpec(rank=2, lora_alpha=4)
    student = add_lora(model, spec, LORA, seed=3)  # wraps ``model`` in place
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in lora_parameters(student).items():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    expected = answer_logits(student, tokenizer, prompts)
    folded = fold_into_adapter(half, LORA.alpha / LORA.r, lora_parameters(student), spec.lora_alpha / spec.rank, layout)
    assert folded.shared.shape == (layout.size,) and folded.private
    assert all(".layers.0." in n for n in folded.private) and not set(folded.private) & set(layout.names)
    assert max(folded.errors.values()) < 1e-5
    tensors = folded.tensors(layout)
    assert set(tensors) == set(half)
    # shared vector -> tensors -> a silo's PEFT model -> vector again
    silo_base, _ = load_base(base_path)
    silo_model = with_lora(silo_base, LORA.r, LORA.alpha, 0.0, LORA.target_modules, seed=0)
    params = lora_parameters(silo_model)
    layout.assign(params, folded.shared)
    with torch.no_grad():
        for name, t in folded.private.items():
            params[name].copy_(t)
    assert np.allclose(layout.flatten(params), folded.shared, atol=1e-7)
    got = answer_logits(silo_model, tokenizer, prompts)
    assert torch.allclose(got, expected, atol=1e-4)
    # a new LoRA that learned nothing (B = 0) leaves the model's function unchanged
    zero = {n: (torch.zeros_like(t) if "lora_B" in n else t) for n, t in lora_parameters(student).items()}
    same = fold_into_adapter(half, LORA.alpha / LORA.r, zero, spec.lora_alpha / spec.rank, layout)
    unchanged, _ = current_model(base_path, LORA, same.tensors(layout))
    assert torch.allclose(answer_logits(unchanged, tokenizer, prompts), current, atol=1e-5)


def test_the_rank_preserving_student_needs_no_fold_and_its_adapter_is_the_trained_network(base_path, adapter, split):
    """E2URec's default student trains the federation's own A and B: fold error 0, and the uploaded
    adapter, loaded as a silo would load it, answers exactly as the trained student did."""
    from fedshield.unlearning import unlearn

    layout = VectorLayout.from_tensors(adapter, PRIVATE)
    spec = UnlearningSpec(steps=8, augment_steps=4, batch_size=8, rank=4, lora_alpha=8, learning_rate=3e-3, augment_learning_rate=1e-2)
    result = unlearn(base_path, LORA, adapter, layout, split.forget, split.retain, spec, TRAINING, keep_model=True)
    assert result.stats["student"] == "adapter" and result.stats["fold_error_max"] == 0.0
    assert result.stats["trainable_parameters"] == sum(t.numel() for t in adapter.values())
    tensors = result.adapter.tensors(layout)
    assert set(tensors) == set(adapter) and all(tensors[n].shape == adapter[n].shape for n in adapter)
    assert any(not torch.equal(tensors[n], adapter[n]) for n in adapter)  # it trained
    model, tokenizer = current_model(base_path, LORA, tensors)
    reloaded = answer_logits(model, tokenizer, split.forget)
    trained = answer_logits(result.model, tokenizer, split.forget)
    assert torch.allclose(reloaded, trained, atol=1e-5)


def test_the_new_lora_student_is_still_available_and_reports_its_fold_error(base_path, adapter, split):
    from fedshield.unlearning import unlearn

    layout = VectorLayout.from_tensors(adapter, PRIVATE)
    spec = UnlearningSpec(steps=4, augment_steps=2, batch_size=8, rank=4, lora_alpha=8)
    result = unlearn(base_path, LORA, adapter, layout, split.forget, split.retain, spec, TRAINING, student="new_lora")
    assert result.stats["student"] == "new_lora" and result.stats["fold_error_max"] > 0  # rank r + r' truncated to r
    assert result.stats["trainable_parameters"] < sum(t.numel() for t in adapter.values()) * 2


def test_the_authors_neggrad_forgets_while_it_keeps_the_retained_data(base_path, adapter, split):
    """CE(D_r) - 0.5 CE(D_f): against the same steps on CE(D_r) alone, the forget-set loss ends higher
    while the retained-set loss stays close."""
    layout = VectorLayout.from_tensors(adapter, PRIVATE)
    spec = UnlearningSpec(steps=8, batch_size=8, rank=4, lora_alpha=8, learning_rate=5e-3)
    runs = {w: neg_grad(base_path, LORA, adapter, layout, split.forget, spec, TRAINING, retain=split.retain, forget_weight=w)
            for w in (0.0, 0.5)}
    assert runs[0.5].method == "neggrad_paper" and runs[0.5].stats["retain_records"] == len(split.retain)

    def ce(result, examples):
        model, tokenizer = current_model(base_path, LORA, result.adapter.tensors(layout))
        return answer_cross_entropy(answer_logits(model, tokenizer, examples), torch.tensor([e.label for e in examples])).item()

    forget_gain = ce(runs[0.5], split.forget) - ce(runs[0.0], split.forget)
    retain_cost = ce(runs[0.5], split.retain) - ce(runs[0.0], split.retain)
    assert forget_gain > 0.02 and forget_gain > retain_cost


def test_bad_teacher_pushes_the_forget_set_toward_an_undecided_answer(base_path, adapter, split):
    from fedshield.unlearning import bad_teacher

    layout = VectorLayout.from_tensors(adapter, PRIVATE)
    spec = UnlearningSpec(steps=10, batch_size=8, rank=4, lora_alpha=8, learning_rate=5e-3)
    result = bad_teacher(base_path, LORA, adapter, layout, split.forget, split.retain, spec, TRAINING)
    assert result.method == "bad_teacher" and result.stats["fold_error_max"] == 0.0

    def distance_from_undecided(tensors):
        model, tokenizer = current_model(base_path, LORA, tensors)
        yes = torch.softmax(answer_logits(model, tokenizer, split.forget), -1)[:, 0]
        return float((yes - 0.5).abs().mean())

    assert distance_from_undecided(result.adapter.tensors(layout)) < 0.7 * distance_from_undecided(adapter)
