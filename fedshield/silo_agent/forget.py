"""The forgetting silo's side of federated unlearning (E2URec).

One silo, after the federation finished, forgets some of its users: it runs E2URec on
the current global model (its private layers included), encrypts the replacement of the
global adapter as a delta against the current one, and uploads it as a special round the
aggregator publishes (without decrypting it). Then it drops the users' records for good
and clears what was computed from them: the error-feedback residual, the old private
layers, the old checkpoint and adapter. Every silo (this one included) applies the
published replacement like an aggregate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..crypto import encrypt_update
from ..learning.data import base_model_path
from ..unlearning import UnlearningSpec, forget_split, score_adapter, unlearn
from ..wire.unlearning import UnlearningAudit, UnlearningRecord
from .agent import SiloAgent
from .checkpoint import remember_forgotten

log = logging.getLogger("fedshield.unlearning")
@dataclass(frozen=True)
class ForgetRequest:
    users: tuple[str, ...] | None = None  # the users to forget, or
    fraction: float | None = None  # a seeded random share of this silo's users (benchmarks, demos)
    requested_by: str = "unknown"
    reason: str = ""
    requested_at: float | None = None


def run_unlearning(agent: SiloAgent, request: ForgetRequest, spec: UnlearningSpec = UnlearningSpec()) -> UnlearningRecord:
    """Forget ``request``'s users at ``agent``'s silo and have the aggregator publish the new global adapter."""
    if agent.workload.name != "recommendation":
        raise ValueError(f"unlearning is implemented for the recommendation workload (E2URec scores forgetting by AUC on "
                         f"users' records); this federation's workload is {agent.workload.name}")
    plan = agent.client.plan()
    if plan.state != "finished":
        raise RuntimeError(f"the federation is still running (round {plan.round} open): unlearn once it has finished")
    agent.apply_unlearnings()  # start from the current global state
    if agent.state.round_done + 1 < plan.rounds_total:
        raise RuntimeError(f"silo {agent.silo} has applied rounds up to {agent.state.round_done}; run it to the end first")
    data = list(agent.train)
    split = forget_split(data, users=request.users, fraction=request.fraction, seed=spec.seed)
    if not split.forget:
        raise ValueError("none of the users to forget has records at this silo")
    gone = set(split.users)
    test = [e for e in agent.val if e.user not in gone]
    base = base_model_path(agent.config, agent.model_cache)
    before = score_adapter(base, agent.config.lora, agent.state.lora, test, split.forget)
    start = time.perf_counter()
    result = unlearn(base, agent.config.lora, agent.state.lora, agent.layout, split.forget, split.retain, spec, agent.config.training)
    seconds = time.perf_counter() - start
    new_tensors = agent.layout.unflatten(result.shared) | {k: v for k, v in result.private.items()}
    after = score_adapter(base, agent.config.lora, _with(agent.state.lora, new_tensors), test, split.forget)

    version = len(agent.client.unlearnings())
    delta = result.shared - agent.state.global_shared
    packing = agent.config.unlearning_packing()  # the run's spec fixes it: every silo checks the bound before applying
    largest = float(np.abs(delta).max()) if delta.size else 0.0
    if largest > packing.value_bound:
        raise ValueError(f"the unlearning would move a coordinate by {largest:g}, over the spec's privacy.unlearning_bound "
                         f"{packing.value_bound:g}: other silos would refuse it")
    encrypted = encrypt_update(agent.keys, delta, weight=1.0, round=agent.config.rounds + version, silo=agent.silo,
                               packing=packing, layout=agent.layout.digest)
    audit = UnlearningAudit(
        requested_by=request.requested_by, reason=request.reason, users_count=len(split.users), users_sha256=split.users_digest,
        requested_at=request.requested_at or time.time(), seconds=seconds,
        forget_auc_before=before["forget_auc"], forget_auc_after=after["forget_auc"],
        test_auc_before=before["test_auc"], test_auc_after=after["test_auc"],
    )
    agent.client.upload_unlearning(version, agent.silo, encrypted.data, audit)
    # From here the users are gone for this silo: their records, and what was computed from them.
    remember_forgotten(agent.workdir, gone)
    agent.forget_local_state(result.private)
    agent.apply_unlearnings()
    record = next(r for r in agent.client.unlearnings() if r.version == version)
    log.info("%s forgot %d users (%d records): adapter %d -> %d", agent.silo, len(gone), len(split.forget),
             record.adapter_version_before, record.adapter_version_after)
    return record


def _with(adapter: dict[str, torch.Tensor], replaced: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: replaced.get(name, tensor) for name, tensor in adapter.items()}
