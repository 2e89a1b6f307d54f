"""The DeepSpeed GPU path (bf16). Skipped cleanly without a CUDA GPU."""

import pytest
import torch

from fedshield.config import TrainingSpec
from fedshield.learning.model import build_tiny_base, load_base, with_lora, yes_probabilities
from fedshield.learning.training import create_engine, train_local
from fedshield.updates import VectorLayout, lora_parameters
from fedshield.workloads.recommendation import build_examples, catalog, prompt_for, synthetic_silos

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_deepspeed_bf16_engine_trains_lora_on_gpu(tmp_path):
    path = build_tiny_base(tmp_path / "tiny", catalog() + [prompt_for(["x"], ["y"], "z")])
    base, tokenizer = load_base(path)
    model = with_lora(base.cuda(), 4, 8, 0.0, ["q_proj", "v_proj", "lm_head"], seed=0)
    engine = create_engine(model, TrainingSpec(precision="bf16", local_steps=3, batch_size=8))
    params = lora_parameters(model)
    layout = VectorLayout.from_tensors(params)
    before = layout.flatten(params)
    examples = build_examples(synthetic_silos(["a"], seed=0)["a"])
    loss = train_local(engine, tokenizer, examples, steps=3, batch_size=8, seed=0)
    assert loss > 0 and next(engine.module.parameters()).is_cuda
    assert (layout.flatten(params) != before).any()
    assert yes_probabilities(engine.module, tokenizer, [e.prompt for e in examples[:4]]).shape == (4,)
