"""Weights written into the model from outside (the decrypted global adapter) are what the engine trains on next.

DeepSpeed's ZeRO stages and its bf16/fp16 optimizers keep their own fp32 master copy of the parameters and write it
back after every step; a value assigned to the parameters alone would be overwritten at the next step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedshield.config import FederationConfig, TrainingSpec
from fedshield.learning.data import base_model_path
from fedshield.learning.model import load_base, with_lora
from fedshield.learning.training import create_engine, load_weights, set_learning_rate, train_local_stats
from fedshield.updates import VectorLayout, lora_parameters
from fedshield.workloads.recommendation import Example


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_assigned_weights_survive_the_next_step(stage, tmp_path):
    config = FederationConfig()
    base, tokenizer = load_base(base_model_path(config, tmp_path))
    model = with_lora(base, 2, 4, 0.0, ("q_proj", "v_proj"), seed=0)
    engine = create_engine(model, TrainingSpec(zero_stage=stage, batch_size=4))
    params = lora_parameters(model)
    layout = VectorLayout.from_tensors(params, ())
    examples = [Example(f"the user liked a and disliked b . will the user like c{i}", i % 2, "u") for i in range(8)]
    train_local_stats(engine, tokenizer, examples, 1, 4, seed=0)  # the optimizer has state and master weights
    received = np.random.default_rng(1).uniform(-0.05, 0.05, layout.size)
    load_weights(engine, layout, params, received)
    set_learning_rate(engine, 1e-12)  # a step that moves nothing it trains on
    train_local_stats(engine, tokenizer, examples, 1, 4, seed=1)
    after = layout.flatten(params)
    assert np.max(np.abs(after - received)) < 1e-6, f"ZeRO {stage}: the step trained on stale master weights"
    assert torch.isfinite(torch.tensor(after)).all()
