"""Liveness and readiness (open to every caller)."""

from __future__ import annotations

from fastapi import APIRouter

from .common import State

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(state: State) -> dict:
    return {"status": "ready", "state": state.coordinator.plan().state}
