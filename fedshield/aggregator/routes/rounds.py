"""A round's uploads (encrypted updates) and its aggregate."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ... import metrics
from ...wire.errors import ErrorCode
from ...wire.messages import MAX_INT, UploadMetadata, UploadReceipt
from ..errors import ApiError
from ..state import caller, upload_limit
from .common import BINARY_ANSWER, BINARY_BODY, ERRORS, Finite, Round, State

router = APIRouter(tags=["rounds"])


@router.put("/v1/rounds/{round}/uploads/{silo}", response_model=UploadReceipt, responses=ERRORS, openapi_extra=BINARY_BODY)
async def upload(round: Round, silo: str, request: Request, state: State, samples: Annotated[int, Query(ge=1, le=MAX_INT)],
                 train_loss: Finite = None, val_loss: Finite = None, val_auc: Finite = None,
                 epsilon: Finite = None) -> UploadReceipt:
    """Upload a silo's encrypted update (an envelope) with its plaintext metadata."""
    caller(request, silo)
    try:
        metadata = UploadMetadata(samples=samples, train_loss=train_loss, val_loss=val_loss, val_auc=val_auc, epsilon=epsilon)
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
def aggregate(round: Round, request: Request, state: State) -> FileResponse:
    """The round's aggregate envelope (425 while the round is open). Individual uploads are never served."""
    silo = state.joined_caller(request)
    return FileResponse(state.coordinator.aggregate_path(round, silo), media_type="application/octet-stream")
