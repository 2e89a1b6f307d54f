"""The silo agent matches refusals on the error enum: a federation that is over ends its run cleanly, other refusals fail it."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from fedshield.silo_agent.agent import SiloAgent
from fedshield.wire.client import AggregatorRefused
from fedshield.wire.errors import ErrorBody, ErrorCode
from fedshield.wire.messages import RoundPlan


def refused(code: ErrorCode) -> AggregatorRefused:
    return AggregatorRefused(code.status, ErrorBody(error=code, detail=f"the aggregator says {code}"))


def stub_agent(tmp_path, refusal: AggregatorRefused, rounds_ok: int = 1) -> SiloAgent:
    """An agent without a model: joining answers a 3-round plan; round ``rounds_ok`` is refused with ``refusal``."""
    agent = SiloAgent.__new__(SiloAgent)
    plan = RoundPlan(state="open", round=0, rounds_total=3, pruning=0.5, explore_share=0.1)
    agent.silo, agent.workdir, agent.budget, agent.dp_sgd, agent.train = "bank-a", tmp_path, None, None, [object()] * 4
    agent.workload = SimpleNamespace(name="recommendation")
    agent.client = SimpleNamespace(join=lambda request: plan)
    agent.layout = SimpleNamespace(size=10, digest="layout")
    agent.state = SimpleNamespace(round_done=-1, history=[])
    agent.saved = []

    def run_round(round: int):
        if round >= rounds_ok:
            raise refusal
        agent.state.round_done = round
        return SimpleNamespace(round=round)

    agent.run_round = run_round
    agent._count_history = lambda: None
    agent.apply_unlearnings = lambda: 0
    agent.save_adapter = lambda out: agent.saved.append(out)
    return agent


@pytest.mark.parametrize("code", [ErrorCode.FEDERATION_STOPPED, ErrorCode.FEDERATION_FINISHED])
def test_a_federation_that_is_over_ends_the_run_cleanly(tmp_path, caplog, code):
    agent = stub_agent(tmp_path, refused(code))
    with caplog.at_level(logging.WARNING, logger="fedshield.silo"):
        history = agent.run()
    assert [r["round"] for r in history] == [0] and agent.saved == [tmp_path / "adapter"]
    assert any(f"the federation is over ({code}" in r.getMessage() and "round 0" in r.getMessage() for r in caplog.records)


def test_another_refusal_still_fails_the_run(tmp_path):
    agent = stub_agent(tmp_path, refused(ErrorCode.WRONG_WEIGHT))
    with pytest.raises(AggregatorRefused) as exc:
        agent.run()
    assert exc.value.code is ErrorCode.WRONG_WEIGHT and agent.saved == []
