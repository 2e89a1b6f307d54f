"""Greedy decoding under ZeRO-3 on each rank of ``torchrun`` (tests/learning/test_multi_rank.py).

``python rank_decoding.py MODEL_DIR OUT MAX_NEW_TOKENS`` builds the tiny model's LoRA engine at ZeRO stage 3 and decodes
two prompts inside ``lockstep()``, as the silo agent's evaluation does. A hook on the output layer makes the ranks
disagree on purpose: on rank 0 every next token is the end-of-text token (it would stop after one pass), on the other
ranks an ordinary word (they would run every pass). Each rank writes its replies and its count of forward passes to
OUT.rank<r>.json.
"""

import json
import sys

import torch

from fedshield.config import FederationConfig, TrainingSpec
from fedshield.learning.instruction import greedy_replies
from fedshield.learning.lockstep import lockstep
from fedshield.learning.model import load_base, with_lora
from fedshield.learning.training import create_engine, leave_distributed, world
from fedshield.workloads.instruction import InstructionExample


def main(model_dir: str, out: str, max_new_tokens: int) -> None:
    torch.manual_seed(0)
    config = FederationConfig(training=TrainingSpec(batch_size=2, zero_stage=3))
    base, tokenizer = load_base(model_dir)
    lora = config.lora
    model = with_lora(base, lora.r, lora.alpha, lora.dropout, lora.target_modules, seed=config.seed)
    create_engine(model, config.training)  # partitions the parameters: every forward pass gathers them from every rank
    rank = world()[0]
    word = next(i for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids)
    forced = tokenizer.eos_token_id if rank == 0 else word
    passes = []

    def force(module, inputs, logits):
        passes.append(1)
        logits[..., forced] = 1e4
        return logits

    model.get_output_embeddings().register_forward_hook(force)
    examples = [InstructionExample.of("what colour is the sky", "blue"), InstructionExample.of("and the sea", "blue")]
    with lockstep():
        replies = greedy_replies(model, tokenizer, examples, max_new_tokens)
    with open(f"{out}.rank{rank}.json", "w") as fh:
        json.dump({"replies": replies, "passes": len(passes)}, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    leave_distributed()  # only after a clean run: a failed rank must not wait in a barrier
