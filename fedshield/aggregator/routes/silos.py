"""Silos join, withdraw and read the current round's plan."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from ...wire.messages import JoinRequest, RoundPlan, WithdrawRequest
from ..state import caller
from .common import ERRORS, State

router = APIRouter(tags=["silos"])


@router.post("/v1/join", response_model=RoundPlan, responses=ERRORS)
def join(req: JoinRequest, request: Request, state: State) -> RoundPlan:
    caller(request, req.silo)
    return state.shown(state.coordinator.join(req), req.silo)


@router.post("/v1/silos/{silo}/withdraw", response_model=RoundPlan, responses=ERRORS)
def withdraw(silo: str, req: WithdrawRequest, request: Request, state: State) -> RoundPlan:
    """The silo stops contributing (its privacy budget is spent, or its operator says so)."""
    caller(request, silo)
    return state.shown(state.coordinator.withdraw(silo, req.reason), silo)


@router.get("/v1/plan", response_model=RoundPlan, responses=ERRORS)
def plan(request: Request, state: State, silo: Annotated[str | None, Query(max_length=63)] = None) -> RoundPlan:
    """The current round's plan. The caller's own weight, lr scale and warm-up weight (``mix_weight``) are in it, and no
    other silo's: the authenticated silo's, or (plain HTTP, names trusted) that of the ``silo`` named, which must match
    an identity (plain HTTP shows every silo's weights and scales)."""
    who = state.joined_caller(request)
    if silo is not None:
        caller(request, silo)  # an authenticated silo may only name itself
        state.coordinator.check_known(silo)
    return state.shown(state.coordinator.plan(viewer=who or silo), who)
