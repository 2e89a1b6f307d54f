"""Private LoRA modules never leave the silo: every uploaded byte is captured and checked."""

import threading

import numpy as np
import pytest
import torch
from support.aggregator_harness import RunningAggregator

from fedshield.config import FederationConfig, PrivacySpec, SiloSpec, TrainingSpec
from fedshield.crypto import EnvelopeReader, decrypt_envelope
from fedshield.silo_agent.agent import SiloAgent
from fedshield.updates import VectorLayout, kept_count, round_mask, scatter

pytestmark = pytest.mark.slow
PRIVATE = ("*.layers.0.*", "*lm_head*")


def test_uploads_hold_only_shared_tensors_and_the_aggregate_leaves_private_ones(keys, public_keys, tmp_path):
    config = FederationConfig(rounds=1, silos=(SiloSpec(name="solo"), SiloSpec(name="partner")),
                              training=TrainingSpec(local_steps=3, batch_size=8),
                              privacy=PrivacySpec(pruning=0.5, private_modules=PRIVATE))
    with RunningAggregator(config, public_keys, tmp_path / "state") as agg:
        agent = SiloAgent(config, "solo", keys, tmp_path / "solo", agg.url)
        partner = SiloAgent(config, "partner", keys, tmp_path / "partner", agg.url)  # an aggregate needs 2 uploads
        sent: list[bytes] = []
        agent.client._http.event_hooks["request"].append(
            lambda request: sent.append(request.read()) if request.method == "PUT" else None)
        private_before = {n: p.detach().clone() for n, p in agent.params.items() if "layers.0." in n or "lm_head" in n}
        shared_layout = agent.layout
        global_before = agent.state.global_shared.copy()
        other = threading.Thread(target=partner.run)
        other.start()
        agent.run()  # joins, runs the single round, saves the adapter
        other.join(600)
        aggregate = EnvelopeReader.from_bytes(agent.client.aggregate(0))
    assert private_before and all(not any(p.replace("*", "") in name for p in PRIVATE) for name in shared_layout.names)
    full = VectorLayout.from_tensors(agent.params)
    assert shared_layout.size < full.size
    assert len(sent) == 1  # every byte this silo uploaded
    upload = EnvelopeReader.from_bytes(sent[0])
    assert upload.header.count == kept_count(shared_layout.size, 0.5)  # sized by the shared vector only
    average = decrypt_envelope(keys, aggregate, round=0)
    mask = round_mask(shared_layout.size, 0.5, 0, config.seed, score=None, explore_share=config.privacy.explore_share)
    # The aggregate (both silos' average) is applied to the shared tensors only.
    assert np.allclose(shared_layout.flatten(agent.params), global_before + scatter(average, mask, shared_layout.size), atol=1e-6)
    for name, before in private_before.items():
        now = agent.params[name].detach()
        assert not torch.equal(now, before), f"{name} was not trained locally"
        assert torch.equal(now.cpu(), agent.state.lora[name]), f"{name} was changed by the aggregate"
