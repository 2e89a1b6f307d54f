"""The forgetting silo's side of federated unlearning (E2URec).

One silo, after the federation finished, forgets some of its users: it runs E2URec on
the current global model (its private layers included), encrypts the replacement of the
global adapter as a delta against the current one, and uploads it as a special round the
aggregator publishes (without decrypting it) once ``privacy.unlearning_approvals`` other silos
have approved exactly its bytes (their SHA-256). Then it drops the users' records for good
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
from ..wire.messages import UploadReceipt
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


@dataclass(frozen=True)
class Uploaded:
    """The forgetting silo's replacement as the aggregator received it (pending until other silos approve its SHA-256)."""

    version: int
    receipt: UploadReceipt


def forget_and_upload(agent: SiloAgent, request: ForgetRequest, spec: UnlearningSpec = UnlearningSpec()) -> Uploaded:
    """Forget ``request``'s users at ``agent``'s silo and upload the encrypted replacement of the global adapter.

    With ``privacy.unlearning_approvals > 0`` the upload is pending until that many other silos approve its SHA-256.
    The users are gone at this silo either way (records and everything computed from them)."""
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
    receipt = agent.client.upload_unlearning(version, agent.silo, encrypted.data, audit)
    # From here the users are gone for this silo: their records, and what was computed from them.
    remember_forgotten(agent.workdir, gone)
    agent.forget_local_state(result.private)
    log.info("%s forgot %d users (%d records): unlearning %d uploaded (%s, sha256 %s)", agent.silo, len(gone), len(split.forget),
             version, "pending approval" if receipt.pending else "published", receipt.sha256)
    return Uploaded(version=version, receipt=receipt)


def wait_published(agent: SiloAgent, version: int, timeout_s: float, poll_s: float = 2.0) -> UnlearningRecord:
    """Wait until unlearning ``version`` is published (approved), apply it at this silo and return its audit record.

    TimeoutError when it is still pending after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        record = next((r for r in agent.client.unlearnings() if r.version == version), None)
        if record is not None:
            agent.apply_unlearnings()
            return record
        if time.monotonic() >= deadline:
            raise TimeoutError(f"unlearning {version} is still waiting for approval after {timeout_s:g} s; once other silos "
                               "approve it, every silo agent (this one included) applies it at its next start")
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def run_unlearning(agent: SiloAgent, request: ForgetRequest, spec: UnlearningSpec = UnlearningSpec(),
                   approval_timeout_s: float = 0.0) -> UnlearningRecord:
    """Forget, upload, wait up to ``approval_timeout_s`` for the other silos' approvals, apply: the published record."""
    uploaded = forget_and_upload(agent, request, spec)
    record = wait_published(agent, uploaded.version, approval_timeout_s)
    log.info("%s: adapter %d -> %d", agent.silo, record.adapter_version_before, record.adapter_version_after)
    return record


def _with(adapter: dict[str, torch.Tensor], replaced: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: replaced.get(name, tensor) for name, tensor in adapter.items()}
