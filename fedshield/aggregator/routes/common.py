"""Declarations the routers share: error responses, path and query types, the binary request body."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query
from fastapi import Path as PathParam

from ...wire.errors import ErrorBody
from ..state import AppState, app_state

MAX_ROUND = 2**31 - 1
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 425, 429, 503)}
BINARY_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
BINARY_ANSWER: dict[int | str, dict[str, Any]] = {200: {"content": {"application/octet-stream": {}}}, **ERRORS}
Round = Annotated[int, PathParam(ge=0, le=MAX_ROUND)]
Finite = Annotated[float | None, Query(allow_inf_nan=False)]
State = Annotated[AppState, Depends(app_state)]
