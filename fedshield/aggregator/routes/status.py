"""The federation's progress, for silos and observers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from ...wire.messages import Status
from ..rounds import STATUS_PAGE
from ..state import caller
from .common import ERRORS, MAX_ROUND, State

router = APIRouter(tags=["status"])
HIDDEN_PLAN: dict[str, Any] = {"mask_seed": None, "layout": None, "weights": {}, "lr_scales": {}}  # what a caller that has not joined never sees


@router.get("/v1/status", response_model=Status, responses=ERRORS)
def status(request: Request, state: State, closed_from: Annotated[int | None, Query(ge=0, le=MAX_ROUND)] = None,
           limit: Annotated[int, Query(ge=1, le=STATUS_PAGE)] = STATUS_PAGE) -> Status:
    """The federation's progress: a summary and one page of closed rounds (``closed_from``, ``limit``).

    A silo sees its own reports; an observer without an identity (the operator) neither reports, sample
    counts nor the plan's details (mask seed, layout, weights)."""
    silo, required = caller(request), state.auth.required
    current = state.coordinator.status(viewer=silo, everything=not required, closed_from=closed_from, limit=limit)
    if required and silo not in state.coordinator.store.silos():
        current = current.model_copy(update={"plan": current.plan.model_copy(update=HIDDEN_PLAN)})
    return current.model_copy(update={"plan": state.shown(current.plan, silo)})
