"""Record-level DP-SGD on a real pretrained LLM: SmolLM2-135M-Instruct with LoRA in the DeepSpeed engine, on the
instruction workload's per-record losses (Opacus' grad samplers on PEFT's LoRA layers of a real Llama)."""

import numpy as np
import pytest
import torch

from fedshield.config import TrainingSpec
from fedshield.learning.dp_sgd import DpSgd
from fedshield.learning.instruction import InstructionWorkload
from fedshield.learning.model import load_base, with_lora
from fedshield.learning.training import create_engine, train_local_dp, train_steps
from fedshield.workloads.triage import examples as triage_examples

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

SPEC = TrainingSpec(learning_rate=1e-3, batch_size=4, local_steps=1, zero_stage=0)


def lora_smollm2(path):
    base, tokenizer = load_base(path)
    return with_lora(base, 4, 8, 0.0, ["q_proj", "v_proj"], seed=0), tokenizer


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_dp_sgd_on_smollm2_without_noise_matches_plain_training_and_with_noise_moves_the_adapter(smollm2_dir):
    examples = triage_examples("emergency", 4, seed=0)
    workload = InstructionWorkload()
    plain_model, tokenizer = lora_smollm2(smollm2_dir)
    plain = create_engine(plain_model, SPEC)
    # DP-SGD averages per-record losses (each record's mean over its response tokens); so does this reference step
    train_steps(plain, 1, lambda _: workload.record_losses(plain, tokenizer, examples).mean())

    dp_model, _ = lora_smollm2(smollm2_dir)
    before = trainable(dp_model)
    dp_engine = create_engine(dp_model, SPEC, dp=True)
    exact = DpSgd(clip_norm=1e6, noise_multiplier=0.0, sampling_rate=1.0)  # every record, no clipping, no noise
    result = train_local_dp(dp_engine, tokenizer, examples, steps=1, dp=exact, seed=0, workload=workload)
    assert np.isfinite(result.loss) and result.tokens > 0
    # Sum of per-record gradients / n = the reference's gradient, so both engines take the same AdamW step. Adam's
    # first step is lr * g / (|g| + eps), about lr * sign(g): coordinates whose gradient is near zero may flip sign
    # under float rounding, so the steps are compared as vectors.
    want, got = trainable(plain_model), trainable(dp_model)
    step_dp = torch.cat([(got[n] - before[n]).flatten() for n in want])
    step_ref = torch.cat([(want[n] - before[n]).flatten() for n in want])
    cosine = float(step_dp @ step_ref / (step_dp.norm() * step_ref.norm()))
    same = float(torch.isclose(step_dp, step_ref, atol=1e-6).float().mean())
    assert cosine > 0.95 and same > 0.98, (cosine, same)

    noisy_model, _ = lora_smollm2(smollm2_dir)
    noisy = create_engine(noisy_model, SPEC, dp=True)
    train_local_dp(noisy, tokenizer, examples, steps=1, dp=DpSgd(clip_norm=1.0, noise_multiplier=1.0, sampling_rate=0.5),
                   seed=1, workload=workload)
    after = trainable(noisy_model)
    assert any(not torch.equal(after[n], before[n]) for n in before)
    assert all(torch.isfinite(t).all() for t in after.values())
