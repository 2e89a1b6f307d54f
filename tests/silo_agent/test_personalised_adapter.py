"""PPLR's personal adapter on real LoRA tensors: the mix, saved in PEFT format and reloaded, the global state untouched,
its checkpoint round trip, and a restarted silo rewriting a personal adapter it had not finished writing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import PeftModel

from fedshield.config import FederationConfig, LoraSpec, PrivacySpec
from fedshield.fairness import personalised_mix
from fedshield.learning.data import base_model_path
from fedshield.learning.model import load_base, with_lora
from fedshield.silo_agent.agent import SiloAgent
from fedshield.silo_agent.checkpoint import PendingUpload, SiloState, load_state, save_state
from fedshield.silo_agent.personal import PERSONAL_ADAPTER, personal_vector, save_peft, shared_values
from fedshield.updates import VectorLayout, lora_parameters

PRIVATE = ("*layers.0.self_attn.q_proj*",)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A tiny model with LoRA whose shared tensors are perturbed (as after local training), its layout, and the base's path."""
    cache = tmp_path_factory.mktemp("model")
    config = FederationConfig(lora=LoraSpec(r=2, target_modules=("q_proj", "v_proj")), privacy=PrivacySpec(private_modules=PRIVATE))
    base_dir = base_model_path(config, cache)
    model = with_lora(load_base(base_dir)[0], 2, 4, 0.0, ("q_proj", "v_proj"), seed=0)
    params = lora_parameters(model)
    layout = VectorLayout.from_tensors(params, config.privacy.private_modules)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for p in params.values():
            p.add_(torch.from_numpy(rng.normal(0, 0.05, tuple(p.shape))).to(p.dtype))
    return model, params, layout, base_dir


def test_the_personal_adapter_is_the_mix_saved_and_reloaded_and_the_global_state_stays(adapter, tmp_path):
    model, params, layout, base_dir = adapter
    own = layout.flatten(params)
    global_shared = own + np.random.default_rng(1).normal(0, 0.02, own.size)
    private_before = {n: p.detach().clone() for n, p in params.items() if n not in {e.name for e in layout.entries}}
    assert private_before, "the fixture has a private module"
    vector = personal_vector(own, global_shared, 0.4, 3)
    assert np.allclose(vector, personalised_mix(own, global_shared, 0.4, 3))
    assert np.allclose(vector, (own + 0.4 * (3 * global_shared - own)) / (1 + 0.4 * 2))  # PPLR with similarities 1
    layout.assign(params, global_shared)
    with shared_values(layout, params, vector, restore=global_shared):
        assert np.allclose(layout.flatten(params), vector, atol=1e-6)
        save_peft(model, tmp_path / PERSONAL_ADAPTER)
    assert np.allclose(layout.flatten(params), global_shared, atol=1e-6)  # the federation's state is back
    assert not (tmp_path / f"{PERSONAL_ADAPTER}.tmp").exists()

    reloaded = PeftModel.from_pretrained(load_base(base_dir)[0], tmp_path / PERSONAL_ADAPTER)
    loaded = lora_parameters(reloaded)
    assert np.allclose(layout.flatten(loaded), vector, atol=1e-6)  # float32 storage
    for name, before in private_before.items():  # private modules: the silo's own, as trained
        assert torch.equal(loaded[name].detach().to(before.dtype), before)

    save_peft(model, tmp_path / PERSONAL_ADAPTER)  # rewriting replaces it whole
    assert np.allclose(layout.flatten(lora_parameters(PeftModel.from_pretrained(load_base(base_dir)[0], tmp_path / PERSONAL_ADAPTER))),
                       global_shared, atol=1e-6)


def test_the_mix_refuses_weights_outside_zero_one_and_mismatched_vectors():
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        personal_vector(np.zeros(3), np.zeros(3), 1.5, 2)
    with pytest.raises(ValueError, match="shape"):
        personal_vector(np.zeros(3), np.zeros(4), 0.5, 2)


def test_the_checkpoint_keeps_the_personal_vector_and_the_planned_weight(tmp_path):
    state = SiloState(round_done=1, global_shared=np.arange(4.0), lora={}, personal_shared=np.full(4, 0.5),
                      pending=PendingUpload(2, b"x", np.array([0]), np.zeros(4), 0.3, mix_weight=0.8))
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    assert np.array_equal(loaded.personal_shared, state.personal_shared) and loaded.pending.mix_weight == 0.8
    old = {k: v for k, v in torch.load(tmp_path / "state.pt", weights_only=False).items() if k != "personal_shared"}
    old["pending"] = {k: v for k, v in old["pending"].items() if k != "mix_weight"}
    torch.save(old, tmp_path / "state.pt")  # a checkpoint written before personalisation still loads
    assert load_state(tmp_path).personal_shared is None and load_state(tmp_path).pending.mix_weight is None


def test_a_restarted_silo_rewrites_a_personal_adapter_its_checkpoint_has(adapter, tmp_path):
    model, params, layout, base_dir = adapter
    global_shared = layout.flatten(params)
    vector = global_shared * 0.5
    agent = SiloAgent.__new__(SiloAgent)
    agent.workdir, agent.model, agent.params, agent.layout = tmp_path, model, params, layout
    agent.state = SiloState(round_done=0, global_shared=global_shared, lora={}, personal_shared=vector)
    agent._restore_personal()
    reloaded = lora_parameters(PeftModel.from_pretrained(load_base(base_dir)[0], tmp_path / PERSONAL_ADAPTER))
    assert np.allclose(layout.flatten(reloaded), vector, atol=1e-6)
    assert np.allclose(layout.flatten(params), global_shared)
