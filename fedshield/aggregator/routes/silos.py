"""Silos join, withdraw and read the current round's plan."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...wire.messages import JoinRequest, RoundPlan, WithdrawRequest
from ..state import caller
from .common import ERRORS, State

router = APIRouter(tags=["silos"])


@router.post("/v1/join", response_model=RoundPlan, responses=ERRORS)
def join(req: JoinRequest, request: Request, state: State) -> RoundPlan:
    caller(request, req.silo)
    return state.coordinator.join(req)


@router.post("/v1/silos/{silo}/withdraw", response_model=RoundPlan, responses=ERRORS)
def withdraw(silo: str, req: WithdrawRequest, request: Request, state: State) -> RoundPlan:
    """The silo stops contributing (its privacy budget is spent, or its operator says so)."""
    caller(request, silo)
    return state.coordinator.withdraw(silo, req.reason)


@router.get("/v1/plan", response_model=RoundPlan, responses=ERRORS)
def plan(request: Request, state: State) -> RoundPlan:
    state.joined_caller(request)
    return state.coordinator.plan()
