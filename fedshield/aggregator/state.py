"""What every route of the aggregator shares: the coordinator, who may call, admission limits, the spool."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from ..crypto.envelope import max_ciphertext_bytes
from ..security.auth import Authenticator
from ..security.limits import RateLimiter, UploadSlots
from ..wire.errors import ErrorCode
from ..wire.messages import RoundPlan
from .errors import ApiError
from .guard import IDENTITY
from .rounds import Coordinator, unlearning_packing

ENVELOPE_SLACK = 64 * 1024


@dataclass
class AppState:
    """The aggregator app's shared state (``app.state.fedshield``)."""

    coordinator: Coordinator
    auth: Authenticator
    slots: UploadSlots
    upload_rate: RateLimiter
    tmp_dir: Path

    @classmethod
    def create(cls, coordinator: Coordinator, auth: Authenticator) -> AppState:
        limits = coordinator.config.limits
        tmp_dir = coordinator.store.root / "incoming"
        tmp_dir.mkdir(exist_ok=True)
        return cls(coordinator, auth, UploadSlots(limits.max_concurrent_uploads, limits.retry_after_s),
                   RateLimiter(limits.silo_uploads_per_minute / 60.0, limits.silo_upload_burst, "uploads"), tmp_dir)

    def shown(self, plan: RoundPlan, silo: str | None) -> RoundPlan:
        """``plan`` as the authenticated ``silo`` may see it: its own weight and lr scale, no other silo's (under
        dynamic balance they follow losses). Plain HTTP trusts every name, so it shows every silo's (tests only)."""
        if not self.auth.required:
            return plan
        return plan.model_copy(update={"weights": {k: v for k, v in plan.weights.items() if k == silo},
                                       "lr_scales": {k: v for k, v in plan.lr_scales.items() if k == silo}})

    def configured(self, silo: str) -> bool:
        return silo in self.coordinator.config.silo_names

    def joined_caller(self, request: Request) -> str | None:
        """The caller, which must have joined (when identities are required)."""
        silo = caller(request)
        if self.auth.required and silo not in self.coordinator.store.silos():
            raise ApiError(ErrorCode.NOT_JOINED, f"silo {silo!r} has not joined: join first")
        return silo

    async def spool(self, request: Request, limit: int) -> Path:
        """Stream the request body to a temporary file, refusing it past ``limit`` bytes or when it arrives too slowly."""
        limits = self.coordinator.config.limits
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE, f"upload of {declared} bytes exceeds the limit of {limit}")
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=".part")
        path, received = Path(name), 0
        expected = int(declared) if declared is not None else limit
        deadline = time.monotonic() + limits.body_idle_timeout_s + expected / limits.min_upload_bytes_per_s
        try:
            with open(fd, "wb") as fh:
                chunks = request.stream().__aiter__()
                while True:
                    left = min(limits.body_idle_timeout_s, deadline - time.monotonic())
                    try:
                        chunk = await asyncio.wait_for(chunks.__anext__(), timeout=max(left, 0.001))
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        raise ApiError(ErrorCode.BODY_TIMEOUT, f"the upload body arrived too slowly ({received} bytes so far)") from None
                    received += len(chunk)
                    if received > limit:
                        raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE, f"upload exceeds the limit of {limit} bytes")
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path


def app_state(request: Request) -> AppState:
    """FastAPI dependency: the app's shared state."""
    return request.app.state.fedshield


def caller(request: Request, claimed: str | None = None) -> str | None:
    """The authenticated silo; it must be ``claimed`` (the silo named in the URL or body) when one is given."""
    silo = request.scope.get(IDENTITY)
    if silo is not None and claimed is not None and claimed != silo:
        raise ApiError(ErrorCode.IDENTITY_MISMATCH, f"authenticated as silo {silo!r}, not {claimed!r}")
    return silo


def upload_limit(coordinator: Coordinator) -> int:
    """Largest acceptable upload: the envelope a valid update of this federation can be, or the config cap."""
    plan = coordinator.plan()
    cap = coordinator.config.max_upload_bytes
    if plan.kept is None:
        return cap
    packing, ckks = coordinator.config.packing(), coordinator.keys.params
    expected = packing.ciphertexts_for(plan.kept, ckks) * (max_ciphertext_bytes(ckks) + 4) + ENVELOPE_SLACK
    return min(cap, expected)


def replacement_limit(coordinator: Coordinator) -> int:
    """Largest acceptable unlearning upload: the whole shared vector, one value per slot."""
    plan = coordinator.plan()
    cap = coordinator.config.max_upload_bytes
    if plan.vector_size is None:
        return cap
    ckks = coordinator.keys.params
    packing = unlearning_packing(coordinator.config)
    return min(cap, packing.ciphertexts_for(plan.vector_size, ckks) * (max_ciphertext_bytes(ckks) + 4) + ENVELOPE_SLACK)
