import math

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from fedshield.crypto import CkksParams, PackingParams
from fedshield.crypto.packing import dequantise, quantise
from fedshield.updates import VectorLayout, compensate, kept_count, lora_parameters, next_residual, round_mask, scatter

PRIVATE = ["*.layers.0.*", "*.layers.2.*"]


@pytest.fixture(scope="module")
def peft_model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
    )
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # lora_B starts at zero; give it values so round trips are meaningful
        for p in lora_parameters(model).values():
            p.normal_(0, 0.02)
    return model


def test_layout_is_sorted_and_excludes_private_modules(peft_model):
    params = lora_parameters(peft_model)
    layout = VectorLayout.from_tensors(params, PRIVATE)
    assert list(layout.names) == sorted(layout.names)
    assert all(".layers.1." in name for name in layout.names)
    assert len(layout.names) == 4  # q and v, A and B, of layer 1 only
    assert layout.size == sum(p.numel() for n, p in params.items() if ".layers.1." in n)


def test_flatten_round_trips_and_never_reads_private_tensors(peft_model):
    params = lora_parameters(peft_model)
    layout = VectorLayout.from_tensors(params, PRIVATE)
    vector = layout.flatten(params)
    back = layout.unflatten(vector)
    for name, tensor in back.items():
        assert torch.equal(tensor, params[name].detach())
    with torch.no_grad():
        private = [p for n, p in params.items() if ".layers.0." in n]
        saved = [p.clone() for p in private]
        for p in private:
            p.add_(1.0)
    assert np.array_equal(layout.flatten(params), vector)
    layout.assign(params, np.zeros(layout.size))
    assert all(torch.equal(p, s + 1.0) for p, s in zip(private, saved, strict=False))
    assert np.array_equal(layout.flatten(params), np.zeros(layout.size))
    layout.assign(params, vector)


def test_layout_digest_changes_with_shapes(peft_model):
    params = lora_parameters(peft_model)
    a = VectorLayout.from_tensors(params)
    b = VectorLayout.from_tensors(params, PRIVATE)
    assert a.digest != b.digest and a.digest == VectorLayout.from_tensors(dict(params)).digest


@pytest.mark.parametrize("pruning", [0.0, 0.5, 0.9, 0.99])
def test_masks_are_identical_across_silos_and_keep_the_ratio(pruning):
    size, seed = 10_000, 42
    global_update = np.random.default_rng(1).normal(size=size)
    masks = [round_mask(size, pruning, 3, seed, score=global_update.copy()) for _ in range(3)]
    assert all(np.array_equal(masks[0], m) for m in masks[1:])
    assert masks[0].size == kept_count(size, pruning) == round(size * (1 - pruning))
    assert np.array_equal(masks[0], np.unique(masks[0]))


def test_mask_exploits_the_largest_global_changes_and_ties_are_deterministic():
    size = 1000
    score = np.zeros(size)
    score[[5, 500, 999]] = [3.0, -2.0, 1.0]
    mask = round_mask(size, 0.9, 1, seed=7, score=score, explore_share=0.5)
    assert {5, 500, 999} <= set(mask.tolist())
    assert np.array_equal(mask, round_mask(size, 0.9, 1, seed=7, score=score, explore_share=0.5))


def test_every_coordinate_is_visited_over_time():
    size, pruning, share = 1000, 0.9, 0.25
    explore = round(kept_count(size, pruning) * share)
    score = np.random.default_rng(0).normal(size=size)
    seen = set()
    for r in range(math.ceil(size / explore)):
        seen.update(round_mask(size, pruning, r, seed=3, score=score, explore_share=share).tolist())
    assert len(seen) == size


def test_error_feedback_conserves_the_dropped_mass():
    size, rounds = 5000, 8
    ckks, packing = CkksParams(), PackingParams(value_bound=0.02)
    rng = np.random.default_rng(0)
    residual, total_sent, total_delta = None, np.zeros(size), np.zeros(size)
    for r in range(rounds):
        delta = rng.normal(0, 0.01, size)
        u = compensate(delta, residual)
        mask = round_mask(size, 0.8, r, seed=1, score=None if r == 0 else np.abs(total_sent))
        ints = quantise(u[mask], 0.3, packing.value_bound, packing.step(ckks))
        sent = dequantise(ints, 0.3, packing.step(ckks))
        residual = next_residual(u, mask, sent)
        total_sent += scatter(sent, mask, size)
        total_delta += delta
    assert np.allclose(total_sent + residual, total_delta, atol=1e-12)
    assert np.abs(residual).sum() > 0  # something was held back, and nothing was lost
