"""One silo's local training as a script, run alone or as each rank of ``torchrun`` (tests/learning/test_multi_rank.py).

``python rank_training.py MODEL_DIR OUT.npz STEPS BATCH [ZERO_STAGE]`` trains the tiny model's LoRA adapter on silo clinic-a's
synthetic examples; rank 0 writes every LoRA tensor (flattened), the mean loss and the tokens to OUT.npz, and every rank r
the examples its forward passes saw to OUT.npz.rank<r>.
"""

import sys

import numpy as np
import torch

from fedshield.config import FederationConfig, TrainingSpec
from fedshield.learning.data import silo_split
from fedshield.learning.model import load_base, with_lora
from fedshield.learning.recommendation import RecommendationWorkload
from fedshield.learning.training import create_engine, leave_distributed, train_local_stats, whole_parameters, world
from fedshield.updates import lora_parameters


class Counting(RecommendationWorkload):
    """The recommendation loss, counting the examples this rank trains on."""

    seen = 0

    def loss(self, engine, tokenizer, batch):
        self.seen += len(batch)
        return super().loss(engine, tokenizer, batch)


def main(model_dir: str, out: str, steps: int, batch_size: int, zero_stage: int = 0) -> None:
    torch.manual_seed(0)
    config = FederationConfig(training=TrainingSpec(local_steps=steps, batch_size=batch_size, zero_stage=zero_stage))
    base, tokenizer = load_base(model_dir)
    lora = config.lora
    model = with_lora(base, lora.r, lora.alpha, lora.dropout, lora.target_modules, seed=config.seed)
    engine = create_engine(model, config.training)
    train = silo_split(config, "clinic-a").train
    workload = Counting()
    result = train_local_stats(engine, tokenizer, train, steps, batch_size, seed=1234, workload=workload)
    with open(f"{out}.rank{world()[0]}", "w") as fh:
        fh.write(str(workload.seen))
    params = lora_parameters(model)
    with whole_parameters(engine, list(params.values())):  # ZeRO 3: every rank gathers the partitioned parameters
        vector = np.concatenate([params[n].detach().double().flatten().numpy() for n in sorted(params)])
    if world()[0] == 0:
        np.savez(out, adapter=vector, loss=result.loss, tokens=result.tokens)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 0)
    leave_distributed()  # only after a clean run: a failed rank must not wait in a barrier
