"""A round's uploads (encrypted updates) and its aggregate."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ... import metrics
from ...wire.errors import ErrorCode
from ...wire.messages import MAX_INT, EpsilonUnit, UploadMetadata, UploadReceipt
from ..errors import ApiError
from ..state import caller, upload_limit
from .common import BINARY_ANSWER, BINARY_BODY, ERRORS, Finite, Round, State

router = APIRouter(tags=["rounds"])
AGGREGATE_CHECK_S = 0.1  # how often a held aggregate request looks whether its round has closed


@router.put("/v1/rounds/{round}/uploads/{silo}", response_model=UploadReceipt, responses=ERRORS, openapi_extra=BINARY_BODY)
async def upload(round: Round, silo: str, request: Request, state: State, samples: Annotated[int, Query(ge=1, le=MAX_INT)],
                 train_loss: Finite = None, val_loss: Finite = None, val_score: Finite = None,
                 epsilon: Finite = None, epsilon_unit: EpsilonUnit | None = None) -> UploadReceipt:
    """Upload a silo's encrypted update (an envelope) with its plaintext metadata."""
    caller(request, silo)
    try:
        metadata = UploadMetadata(samples=samples, train_loss=train_loss, val_loss=val_loss, val_score=val_score, epsilon=epsilon,
                                  epsilon_unit=epsilon_unit)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ApiError(ErrorCode.MALFORMED_REQUEST, f"{where}: {first.get('msg')}") from None
    coordinator = state.coordinator
    if state.configured(silo):
        coordinator.check_metadata(silo, metadata)  # before the body: a refused claim costs no bytes
        state.upload_rate.take(silo)  # bounded keys: configured silos only
    with state.slots.hold(silo if state.configured(silo) else None):
        path = await state.spool(request, upload_limit(coordinator))
        receipt = await run_in_threadpool(coordinator.accept_upload, round, silo, path, metadata)
    if not receipt.duplicate:
        metrics.UPLOADS_ACCEPTED.labels(silo).inc()
        metrics.UPLOAD_BYTES.labels(silo).inc(receipt.bytes)
    return receipt


@router.get("/v1/rounds/{round}/aggregate", responses=BINARY_ANSWER)
async def aggregate(round: Round, request: Request, state: State) -> FileResponse:
    """The round's aggregate envelope. Individual uploads are never served.

    A long poll: while the round is open the request is held (up to ``limits.aggregateWaitS``,
    checked every ``AGGREGATE_CHECK_S``), answered as soon as the aggregate exists, else 425 with
    a Retry-After. A waiting silo so sends about one request per wait instead of polling.
    """
    silo = state.joined_caller(request)
    coordinator = state.coordinator
    deadline = asyncio.get_running_loop().time() + coordinator.config.limits.aggregate_wait_s
    while True:
        try:
            path = await run_in_threadpool(coordinator.aggregate_path, round, silo)
            return FileResponse(path, media_type="application/octet-stream")
        except ApiError as exc:
            if exc.code is not ErrorCode.ROUND_NOT_CLOSED or asyncio.get_running_loop().time() >= deadline:
                raise
        await asyncio.sleep(AGGREGATE_CHECK_S)
