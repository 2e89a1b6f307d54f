"""A real federation round on a pretrained LLM: SmolLM2-135M-Instruct (imported from its packaged
GGUF file), LoRA r=8 on q, k, v, o in a DeepSpeed engine per silo, pruning 0.5, real CKKS.

In process (``fedshield.local.simulation``): the same learning and update path as the silo agent,
without processes or HTTP, so that it stays cheap on two cores."""

import time

import numpy as np
import pytest

from fedshield.config import FederationConfig, LoraSpec, ModelSpec, PrivacySpec, SiloSpec, TrainingSpec
from fedshield.learning.model import answer_ids, yes_probabilities
from fedshield.local.simulation import InProcessFederation

pytestmark = pytest.mark.slow

VAL = 8  # validation prompts scored per silo


def test_one_encrypted_pruned_round_on_smollm2(smollm2_dir, keys, tmp_path, one_torch_thread):
    config = FederationConfig(
        rounds=1, silos=(SiloSpec(name="bank-a"), SiloSpec(name="bank-b")),
        model=ModelSpec(path=str(smollm2_dir)),
        lora=LoraSpec(r=8, alpha=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj")),
        training=TrainingSpec(local_steps=1, batch_size=4, learning_rate=1e-3),
        privacy=PrivacySpec(pruning=0.5),
    )
    start = time.monotonic()
    fed = InProcessFederation(config, tmp_path, keys=keys)
    for silo in fed.silos:
        silo.val = silo.val[:VAL]
        assert silo.tokenizer.convert_ids_to_tokens(list(answer_ids(silo.tokenizer, silo.val[0].prompt))) == ["Ġyes", "Ġno"]
    assert fed.layout.size == 30 * (2 * 8 * (576 + 576) + 2 * 8 * (576 + 192))  # 30 layers, q/o 576x576, k/v 576x192
    before_global = fed.global_shared.copy()
    before = {s.name: yes_probabilities(s.model, s.tokenizer, [e.prompt for e in s.val]) for s in fed.silos}

    result = fed.run_round(0)

    changed = fed.global_shared != before_global
    assert changed.any() and changed.mean() <= 0.5 + 1e-9  # only the round's kept half can move
    for silo in fed.silos:  # every silo holds the decrypted global adapter
        assert np.array_equal(fed.layout.flatten(silo.params), fed.global_shared.astype(np.float32))
        after = yes_probabilities(silo.model, silo.tokenizer, [e.prompt for e in silo.val])
        assert ((after > 0) & (after < 1)).all() and not np.allclose(after, before[silo.name])
        assert 0 <= result.scores[silo.name] <= 1
    assert result.kept == fed.layout.size // 2 and all(n > 0 for n in result.upload_bytes.values())
    assert time.monotonic() - start < 600
