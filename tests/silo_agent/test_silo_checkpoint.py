import numpy as np
import torch

from fedshield.silo_agent.checkpoint import PendingUpload, SiloState, load_state, save_state


def test_state_round_trips_with_a_pending_upload(tmp_path):
    assert load_state(tmp_path) is None
    state = SiloState(
        round_done=2, global_shared=np.arange(5.0), lora={"x.lora_A.weight": torch.ones(2, 3)},
        residual=np.full(5, 0.5), score=np.zeros(5),
        pending=PendingUpload(3, b"envelope", np.array([1, 3]), np.full(5, 0.25), 0.7),
        history=[{"round": 2, "score": 0.6, "metric": "auc"}],
    )
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    assert loaded.round_done == 2 and loaded.history == state.history
    assert np.array_equal(loaded.global_shared, state.global_shared) and torch.equal(loaded.lora["x.lora_A.weight"], torch.ones(2, 3))
    assert loaded.pending.round == 3 and loaded.pending.data == b"envelope" and np.array_equal(loaded.pending.mask, [1, 3])
    state.pending = None
    save_state(tmp_path, state)
    assert load_state(tmp_path).pending is None
    assert not list(tmp_path.glob("*.tmp"))
