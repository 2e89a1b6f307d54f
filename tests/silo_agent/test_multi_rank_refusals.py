"""A silo agent started as one of several ranks refuses what a multi-rank silo cannot do (issue #20)."""

import pytest

from fedshield.config import (
    MULTI_NODE_DP_SGD_MESSAGE,
    AggregationSpec,
    DPSpec,
    FederationConfig,
    PrivacySpec,
    TrainingSpec,
    uneven_batch_message,
)
from fedshield.silo_agent.agent import SiloAgent


@pytest.fixture
def two_ranks(monkeypatch):
    """The environment torchrun gives rank 1 of 2 (no world is joined: the agent refuses before that)."""
    for key, value in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)


def test_dp_sgd_is_refused_with_the_spec_message(tmp_path, keys, two_ranks):
    config = FederationConfig(privacy=PrivacySpec(dp=DPSpec(enabled=True, unit="record", noise_multiplier=1.0)))
    with pytest.raises(ValueError) as info:
        SiloAgent(config, "clinic-a", keys, tmp_path / "silo", "http://127.0.0.1:9", model_cache=tmp_path / "cache")
    assert str(info.value) == f"{MULTI_NODE_DP_SGD_MESSAGE} (silo clinic-a runs 2 ranks)"


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_every_zero_stage_passes_the_multi_rank_checks(tmp_path, keys, two_ranks, stage, monkeypatch):
    """Stages 1-2 partition the optimiser state and gradients (the checkpoint gathers the partitions), stage 3 the
    parameters too (every read of them is a gather every rank joins): the agent goes on to load its data and model
    (stopped here, before any world is joined)."""
    import fedshield.silo_agent.agent as agent

    class Loaded(Exception):
        pass

    def stop(*_a, **_k):
        raise Loaded

    monkeypatch.setattr(agent, "load_base", stop)
    config = FederationConfig(training=TrainingSpec(zero_stage=stage))
    with pytest.raises(Loaded):
        SiloAgent(config, "clinic-a", keys, tmp_path / "silo", "http://127.0.0.1:9", model_cache=tmp_path / "cache")


def test_personalise_with_zero_stage_3_is_refused_by_the_spec():
    with pytest.raises(ValueError, match="aggregation.personalise with training.zeroStage 3 is not supported"):
        FederationConfig(training=TrainingSpec(zero_stage=3), aggregation=AggregationSpec(personalise=True))
    assert FederationConfig(training=TrainingSpec(zero_stage=2), aggregation=AggregationSpec(personalise=True))


def test_a_batch_that_does_not_split_over_the_ranks_is_refused_at_start_with_the_spec_message(tmp_path, keys, two_ranks, monkeypatch):
    import fedshield.silo_agent.agent as agent

    monkeypatch.setattr(agent, "load_base", lambda *a, **k: pytest.fail("the model was loaded before the batch check"))
    config = FederationConfig(training=TrainingSpec(batch_size=9))  # one node each in the config; torchrun says 2 ranks
    with pytest.raises(ValueError) as info:
        SiloAgent(config, "clinic-a", keys, tmp_path / "silo", "http://127.0.0.1:9", model_cache=tmp_path / "cache")
    assert str(info.value) == uneven_batch_message(9, ["clinic-a (2 ranks)"])
    assert "must divide by the world size" in str(info.value) and "nodes x max(1, gpusPerNode) under the operator" in str(info.value)
