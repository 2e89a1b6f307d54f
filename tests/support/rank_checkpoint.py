"""A silo's checkpoint and restart as a script, run alone or as each rank of ``torchrun`` (tests/silo_agent/test_checkpoint_zero.py).

``python rank_checkpoint.py MODEL_DIR WORKDIR OUT ZERO_STAGE PHASE`` builds the tiny model's LoRA engine for silo
clinic-a. PHASE ``first``: train 2 steps, checkpoint with the agent's own ``SiloAgent._checkpoint`` into WORKDIR, write
this rank's optimiser moments to OUT.first.rank<r>.pt, train 2 more steps and (rank 0) write the adapter to
OUT.first.npz. PHASE ``resume``: a fresh engine restored by ``SiloAgent._restore_weights`` from what rank 0 loaded and
broadcast (as the agent starts), its moments to OUT.resume.rank<r>.pt, then the same 2 steps, the adapter to
OUT.resume.npz.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from fedshield.config import FederationConfig, TrainingSpec
from fedshield.learning.data import silo_split
from fedshield.learning.model import load_base, with_lora
from fedshield.learning.training import broadcast, create_engine, leave_distributed, train_local_stats, world
from fedshield.silo_agent.agent import SiloAgent
from fedshield.silo_agent.checkpoint import SiloState, load_state
from fedshield.updates import lora_parameters


def moments(engine) -> dict:
    """This rank's live AdamW state (the base optimiser's: under ZeRO, over this rank's flat partition)."""
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    return {i: {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in state.items()}
            for i, state in enumerate(base.state.values())}


def main(model_dir: str, workdir: str, out: str, zero_stage: int, phase: str) -> None:
    torch.manual_seed(0)
    config = FederationConfig(training=TrainingSpec(local_steps=2, batch_size=8, zero_stage=zero_stage))
    base, tokenizer = load_base(model_dir)
    lora = config.lora
    model = with_lora(base, lora.r, lora.alpha, lora.dropout, lora.target_modules, seed=config.seed)
    engine = create_engine(model, config.training)
    train = silo_split(config, "clinic-a").train
    agent = object.__new__(SiloAgent)  # only what _checkpoint and _restore_weights use
    agent.rank, agent.ranks = world()
    agent.zero3, agent._live_moments = zero_stage == 3, phase == "first"  # first: the engine trains before the checkpoint
    agent.engine, agent.params, agent.workdir = engine, lora_parameters(model), Path(workdir)
    if phase == "first":
        train_local_stats(engine, tokenizer, train, 2, 8, seed=1)
        agent.state = SiloState(round_done=0, global_shared=np.zeros(1, np.float32), lora={})
        agent._checkpoint()
    else:
        agent.state = broadcast(load_state(workdir) if agent.rank == 0 else None)
        agent._restore_weights()
        agent._resume_moments()  # what the agent does before its first training step
    torch.save(moments(engine), f"{out}.{phase}.rank{agent.rank}.pt")
    train_local_stats(engine, tokenizer, train, 2, 8, seed=2)
    with agent._whole():  # under ZeRO-3 every rank takes part in the gather
        params = agent.params
        if agent.rank == 0:
            np.savez(f"{out}.{phase}.npz", adapter=np.concatenate([params[n].detach().double().flatten().numpy() for n in sorted(params)]))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    leave_distributed()  # only after a clean run: a failed rank must not wait in a barrier
