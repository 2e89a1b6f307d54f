"""Record- and user-level DP-SGD: per-unit clipping, the noise scale, the accountant, budgets, the DeepSpeed path."""

from __future__ import annotations

import random

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import pld, rdp

from fedshield.config import TrainingSpec
from fedshield.learning.dp_sgd import DpSgd, noise_only, poisson_units, privatised_gradient, unit_ids
from fedshield.learning.model import answer_ids, answer_losses, build_tiny_base, last_token_logits, load_base, with_lora
from fedshield.learning.training import create_engine, train_local_dp, train_local_stats
from fedshield.privacy import DpSgdBudget, dp_sgd_epsilon, noise_for_dp_sgd
from fedshield.workloads.recommendation import build_examples, catalog, prompt_for, synthetic_silos


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_base(tmp_path_factory.mktemp("tiny"), catalog() + [prompt_for(["x"], ["y"], "z")])


@pytest.fixture(scope="module")
def examples():
    return build_examples(synthetic_silos(["a"], seed=0)["a"], history=5)[:24]


def lora_model(tiny):
    base, tokenizer = load_base(tiny)
    return with_lora(base, 4, 8, 0.0, ["q_proj", "v_proj"], seed=0), tokenizer


def naive_record_grads(model, tokenizer, examples):
    """One backward pass per record: the reference per-record gradients."""
    yes, no = answer_ids(tokenizer, examples[0].prompt)
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for e in examples:
        logits = last_token_logits(model, tokenizer, [e.prompt])
        loss = answer_losses(logits, torch.tensor([e.label]), yes, no).sum()
        out.append(torch.autograd.grad(loss, params))
    return [torch.stack([g[j] for g in out]) for j in range(len(params))]


def opacus_record_grads(model, tokenizer, examples):
    from opacus import GradSampleModule

    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    yes, no = answer_ids(tokenizer, examples[0].prompt)
    logits = last_token_logits(gsm, tokenizer, [e.prompt for e in examples])
    answer_losses(logits, torch.tensor([e.label for e in examples]), yes, no).sum().backward()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad_sample.detach().clone() for p in params]
    gsm._close()
    return grads


def clip_reference(per_unit: list[list[torch.Tensor]], clip: float) -> list[torch.Tensor]:
    """Clip each unit's gradient (a list over parameters) by its joint norm and sum: written as a plain loop."""
    total = [torch.zeros_like(g) for g in per_unit[0]]
    for grads in per_unit:
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        scale = min(1.0, clip / norm) if norm > 0 else 1.0
        for t, g in zip(total, grads, strict=False):
            t += g * scale
    return total


def test_opacus_per_record_gradients_equal_a_naive_loop(tiny, examples):
    model, tokenizer = lora_model(tiny)
    batch = examples[:8]
    naive = naive_record_grads(model, tokenizer, batch)
    fast = opacus_record_grads(model, tokenizer, batch)
    for a, b in zip(naive, fast, strict=False):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("unit", ["record", "user"])
def test_per_unit_clipping_equals_a_loop_over_units(tiny, examples, unit):
    model, tokenizer = lora_model(tiny)
    batch = examples[:10]
    users = [f"u{i % 3}" for i in range(len(batch))] if unit == "user" else [e.user for e in batch]
    grads = naive_record_grads(model, tokenizer, batch)
    units = unit_ids(users, unit)
    n_units = max(units) + 1
    norms = [float(torch.sqrt(sum((g[i] ** 2).sum() for g in grads))) for i in range(len(batch))]
    clip = float(np.median(norms))  # some units are clipped, some are not
    params = DpSgd(clip_norm=clip, noise_multiplier=0.0, sampling_rate=0.5, unit=unit)
    got = privatised_gradient(grads, torch.tensor(units), n_units, params, expected_units=4.0)
    per_unit = [[sum(g[i] for i in range(len(batch)) if units[i] == u) for g in grads] for u in range(n_units)]
    want = [t / 4.0 for t in clip_reference(per_unit, clip)]
    for a, b in zip(got, want, strict=False):
        assert torch.allclose(a, b.float(), atol=1e-6, rtol=1e-4)
    if unit == "user":
        assert n_units == 3  # a user's records are one unit


def test_user_level_needs_every_users_id():
    with pytest.raises(ValueError, match="user id"):
        unit_ids(["a", "", "b"], "user")


def test_the_noise_has_standard_deviation_sigma_times_clip_over_the_expected_batch():
    params = DpSgd(clip_norm=0.5, noise_multiplier=1.3, sampling_rate=0.1)
    gen = torch.Generator().manual_seed(0)
    zero = [torch.zeros(50, 3, 20_000)]  # a batch whose every gradient is zero
    noisy = privatised_gradient(zero, torch.arange(50) % 10, 10, params, expected_units=2.0, generator=gen)[0]
    empty = noise_only([torch.Size([60_000])], params, expected_units=2.0, generator=gen)[0]
    for x in (noisy, empty):
        assert float(x.mean()) == pytest.approx(0.0, abs=0.01)
        assert float(x.std()) == pytest.approx(1.3 * 0.5 / 2.0, rel=0.02)


def test_poisson_sampling_includes_each_unit_at_the_rate():
    rng = random.Random(0)
    sizes = [len(poisson_units(200, 0.05, rng)) for _ in range(400)]
    assert np.mean(sizes) == pytest.approx(10.0, rel=0.05)
    assert np.var(sizes) == pytest.approx(200 * 0.05 * 0.95, rel=0.25)  # binomial, not a fixed batch


@pytest.mark.parametrize("q,sigma,steps,delta", [
    (0.01, 1.0, 1000, 1e-5), (0.04, 0.7, 100, 1e-5), (0.1, 2.0, 50, 1e-6), (1.0, 5.0, 10, 1e-5), (0.02, 1.1, 3000, 1e-5),
])
def test_the_accountant_is_dp_accountings_pld_and_rdp(q, sigma, steps, delta):
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    ref_pld, ref_rdp = pld.PLDAccountant(), rdp.RdpAccountant()
    ref_pld.compose(event)
    ref_rdp.compose(event)
    assert dp_sgd_epsilon(q, sigma, steps, delta) == pytest.approx(ref_pld.get_epsilon(delta), rel=1e-9)
    assert dp_sgd_epsilon(q, sigma, steps, delta, accountant="rdp") == pytest.approx(ref_rdp.get_epsilon(delta), rel=1e-9)
    assert dp_sgd_epsilon(q, sigma, steps, delta) <= dp_sgd_epsilon(q, sigma, steps, delta, accountant="rdp") + 1e-9


def test_epsilon_is_monotone_in_each_argument():
    base = dict(sampling_rate=0.04, noise_multiplier=1.0, steps=200, delta=1e-5)
    e0 = dp_sgd_epsilon(**base)
    assert dp_sgd_epsilon(**{**base, "sampling_rate": 0.08}) > e0
    assert dp_sgd_epsilon(**{**base, "noise_multiplier": 1.5}) < e0
    assert dp_sgd_epsilon(**{**base, "steps": 400}) > e0
    assert dp_sgd_epsilon(**{**base, "delta": 1e-7}) > e0
    assert dp_sgd_epsilon(**{**base, "steps": 0}) == 0.0


def test_noise_is_calibrated_to_the_target_epsilon():
    sigma = noise_for_dp_sgd(8.0, 0.04, 100, 1e-5)
    assert dp_sgd_epsilon(0.04, sigma, 100, 1e-5) <= 8.0 + 1e-6
    assert dp_sgd_epsilon(0.04, sigma * 0.97, 100, 1e-5) > 8.0  # the smallest such noise, within the search tolerance
    assert noise_for_dp_sgd(2.0, 0.04, 100, 1e-5) > sigma


def test_a_silo_stops_before_the_step_that_would_exceed_its_budget():
    budget = DpSgdBudget(sampling_rate=0.05, noise_multiplier=1.0, delta=1e-5, epsilon_budget=2.0)  # 1 step: 1.03, 10: 1.66
    allowed = budget.steps_within(done=0, wanted=100)
    assert 10 < allowed < 100
    assert budget.allows(allowed) and not budget.allows(allowed + 1)
    assert budget.steps_within(done=allowed - 5, wanted=8) == 5  # five steps later the budget is spent
    assert budget.steps_within(done=allowed, wanted=8) == 0


def test_dp_sgd_runs_in_the_deepspeed_engine_and_without_noise_matches_plain_training(tiny, examples):
    """q=1, sigma=0 and a clip no gradient reaches: DP-SGD takes plain SGD's steps (sum over records / n = the mean)."""
    spec = TrainingSpec(learning_rate=1e-2, batch_size=len(examples), local_steps=3, zero_stage=0)
    plain_model, tokenizer = lora_model(tiny)
    plain = create_engine(plain_model, spec)
    plain.optimizer.param_groups[0]["lr"] = 1e-2
    train_local_stats(plain, tokenizer, examples, steps=3, batch_size=len(examples), seed=0)
    dp_model, _ = lora_model(tiny)
    dp_engine = create_engine(dp_model, spec, dp=True)
    result = train_local_dp(dp_engine, tokenizer, examples, steps=3, dp=DpSgd(clip_norm=1e6, noise_multiplier=0.0, sampling_rate=1.0),
                            seed=0)
    assert np.isfinite(result.loss) and result.tokens > 0
    plain_params = {n: p for n, p in plain_model.named_parameters() if p.requires_grad}
    for name, p in dp_model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p, plain_params[name], atol=1e-5), name


def test_dp_sgd_with_noise_moves_the_lora_weights_and_refuses_zero_stages_above_0(tiny, examples):
    model, tokenizer = lora_model(tiny)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    engine = create_engine(model, TrainingSpec(batch_size=8, local_steps=2, zero_stage=0), dp=True)
    train_local_dp(engine, tokenizer, examples, steps=2, dp=DpSgd(clip_norm=1.0, noise_multiplier=1.0, sampling_rate=0.3), seed=1)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="ZeRO stage 0"):
        create_engine(lora_model(tiny)[0], TrainingSpec(batch_size=8, local_steps=2, zero_stage=2), dp=True)
