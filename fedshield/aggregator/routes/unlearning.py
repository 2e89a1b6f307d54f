"""Published unlearnings: the ledger, replacement uploads, approvals, and the published envelopes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ...wire.errors import ErrorCode
from ...wire.messages import UploadReceipt
from ...wire.unlearning import AUDIT_HEADER, ApprovalRequest, PendingUnlearning, UnlearningAudit, UnlearningRecord
from ..errors import ApiError
from ..guard import OBSERVER
from ..state import caller, replacement_limit
from .common import BINARY_ANSWER, BINARY_BODY, ERRORS, Round, State

router = APIRouter(tags=["unlearning"])


@router.get("/v1/unlearning", response_model=list[UnlearningRecord], responses=ERRORS)
def unlearnings(request: Request, state: State) -> list[UnlearningRecord]:
    """The audit records of every published unlearning, oldest first (joined silos and observers)."""
    if not request.scope.get(OBSERVER):
        state.joined_caller(request)
    return state.coordinator.unlearnings()


@router.put("/v1/unlearning/{version}/uploads/{silo}", response_model=UploadReceipt, responses=ERRORS, openapi_extra=BINARY_BODY)
async def upload_unlearning(version: Round, silo: str, request: Request, state: State) -> UploadReceipt:
    """A silo's encrypted replacement of the global adapter (E2URec), published as the next global state.

    The audit record travels as JSON in the ``x-fedshield-audit`` header."""
    caller(request, silo)
    try:
        audit = UnlearningAudit.model_validate_json(request.headers.get(AUDIT_HEADER) or "")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first.get("loc", ()))) or AUDIT_HEADER
        raise ApiError(ErrorCode.MALFORMED_AUDIT, f"{where}: {first.get('msg')}") from None
    if state.configured(silo):
        state.upload_rate.take(silo)
    with state.slots.hold(silo if state.configured(silo) else None):
        path = await state.spool(request, replacement_limit(state.coordinator))
        return await run_in_threadpool(state.coordinator.accept_unlearning, version, silo, path, audit)


@router.get("/v1/unlearning/pending", response_model=list[PendingUnlearning], responses=ERRORS)
def pending_unlearnings(request: Request, state: State) -> list[PendingUnlearning]:
    """Unlearnings uploaded but waiting for other silos' approval (``privacy.unlearning_approvals``; joined silos and observers)."""
    if not request.scope.get(OBSERVER):
        state.joined_caller(request)
    return state.coordinator.pending_unlearnings()


@router.post("/v1/unlearning/{version}/approvals/{silo}", response_model=PendingUnlearning, responses=ERRORS)
def approve_unlearning(version: Round, silo: str, req: ApprovalRequest, request: Request, state: State) -> PendingUnlearning:
    """Silo ``silo`` approves pending unlearning ``version`` (exactly the bytes with this SHA-256)."""
    caller(request, silo)
    return state.coordinator.approve_unlearning(version, silo, req.sha256)


@router.get("/v1/unlearning/{version}/aggregate", responses=BINARY_ANSWER)
def unlearning_aggregate(version: Round, request: Request, state: State) -> FileResponse:
    """A published unlearning, to apply like an aggregate."""
    state.joined_caller(request)
    return FileResponse(state.coordinator.unlearning_path(version), media_type="application/octet-stream")
