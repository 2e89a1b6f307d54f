"""Every refusal the aggregator's app answers, as one :class:`~fedshield.wire.errors.ErrorBody`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import metrics
from ..security.limits import Busy
from ..wire.errors import ErrorCode, error_body
from .errors import ApiError

HTTP_CODES = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}


async def api_error(_: Request, exc: ApiError) -> JSONResponse:
    if exc.code is not ErrorCode.ROUND_NOT_CLOSED:  # polled while a round is open: not a refusal
        metrics.UPLOADS_REJECTED.labels(exc.code).inc()
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return JSONResponse(error_body(exc.code, exc.detail), status_code=exc.status, headers=headers)


async def busy(_: Request, exc: Busy) -> JSONResponse:
    code = ErrorCode(exc.code)
    metrics.UPLOADS_REJECTED.labels(code).inc()
    return JSONResponse(error_body(code, exc.detail), status_code=exc.status, headers={"Retry-After": exc.retry_after})


async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = HTTP_CODES.get(exc.status_code, ErrorCode.HTTP_ERROR)
    return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    code = ErrorCode.MALFORMED_REQUEST
    return JSONResponse(error_body(code, f"{where}: {first.get('msg', 'invalid request')}"), status_code=code.status)


def install(app: FastAPI) -> None:
    # Starlette types every handler as taking any Exception; it only calls each with the class it is registered for.
    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(Busy, busy)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid)  # type: ignore[arg-type]
