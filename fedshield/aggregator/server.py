"""The aggregator's HTTP API (FastAPI; OpenAPI at /openapi.json, docs at /docs)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from .. import metrics
from ..config import FederationConfig
from ..crypto import Keys
from ..crypto.envelope import max_ciphertext_bytes
from ..security.auth import Authenticator
from ..security.limits import Busy, RateLimiter, UploadSlots
from ..security.slowpeers import header_deadline_protocol
from ..security.tls import ServerTLS, uvicorn_ssl_options
from ..wire.messages import MAX_INT, ErrorBody, JoinRequest, RoundPlan, Status, UploadMetadata, UploadReceipt, WithdrawRequest
from ..wire.unlearning import AUDIT_HEADER, ApprovalRequest, PendingUnlearning, UnlearningAudit, UnlearningRecord
from .rounds import STATUS_PAGE, ApiError, Coordinator, unlearning_packing
from .store import Store

log = logging.getLogger("fedshield.aggregator")
ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 425, 429, 503)}
ENVELOPE_SLACK = 64 * 1024
MAX_ROUND = 2**31 - 1
Round = Annotated[int, PathParam(ge=0, le=MAX_ROUND)]
Finite = Annotated[float | None, Query(allow_inf_nan=False)]
IDENTITY = "fedshield.silo"  # scope key the guard sets: the authenticated silo, or None without authentication
OPEN_PATHS = ("/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
OBSERVER_PATHS = ("/v1/status",)  # open to callers without an identity: a summary (no reports, no plan details), rate-limited
OBSERVER_BUCKET = "observer"  # the one rate-limit bucket every caller without an identity shares
OBSERVER_READS = ("/v1/status", "/v1/unlearning")  # what a certified observer (Authenticator.observers) may GET, and nothing else
OBSERVER = "fedshield.observer"  # scope key the guard sets for a certified observer


class Guard:
    """ASGI middleware in front of every route but the open ones: authenticates the caller and applies its rate limit.

    It answers before any body is read, so an unauthenticated upload costs the aggregator nothing.
    """

    def __init__(self, app, auth: Authenticator, known: tuple[str, ...], rate: RateLimiter, observers: RateLimiter):
        self.app, self.auth, self.known, self.rate, self.observers = app, auth, known, rate, observers

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or not self.auth.required:
            if scope["type"] == "http":
                scope[IDENTITY] = None
            return await self.app(scope, receive, send)
        if scope.get("method") == "GET" and scope["path"] in OBSERVER_READS and self.auth.is_observer(scope):
            scope[IDENTITY], scope[OBSERVER] = None, True
            return await self.app(scope, receive, send)
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        silo, why = self.auth.identify(scope, header)
        if silo is None and scope["path"] in OBSERVER_PATHS:
            try:
                self.observers.take(OBSERVER_BUCKET)
            except Busy as exc:
                return await _reply(send, exc.status, exc.code, exc.detail, {"retry-after": exc.retry_after})
            scope[IDENTITY] = None
            return await self.app(scope, receive, send)
        if silo is None:
            return await _reply(send, 401, "unauthenticated", why, {"www-authenticate": "Bearer"})
        if silo not in self.known:
            return await _reply(send, 403, "unknown_silo", f"{silo!r} is not a silo of this federation")
        try:
            self.rate.take(silo)
        except Busy as exc:
            return await _reply(send, exc.status, exc.code, exc.detail, {"retry-after": exc.retry_after})
        scope[IDENTITY] = silo
        await self.app(scope, receive, send)


async def _reply(send, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
    metrics.UPLOADS_REJECTED.labels(code).inc()
    body = json.dumps(ErrorBody(error=code, detail=detail).model_dump()).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def caller(request: Request, claimed: str | None = None) -> str | None:
    """The authenticated silo; it must be ``claimed`` (the silo named in the URL or body) when one is given."""
    silo = request.scope.get(IDENTITY)
    if silo is not None and claimed is not None and claimed != silo:
        raise ApiError(403, "identity_mismatch", f"authenticated as silo {silo!r}, not {claimed!r}")
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


def create_app(coordinator: Coordinator, auth: Authenticator | None = None) -> FastAPI:
    """The aggregator's app; with ``auth`` requiring identities, every /v1 route is bound to the calling silo."""
    auth = auth or Authenticator()
    limits = coordinator.config.limits
    slots = UploadSlots(limits.max_concurrent_uploads, limits.retry_after_s)
    upload_rate = RateLimiter(limits.silo_uploads_per_minute / 60.0, limits.silo_upload_burst, "uploads")
    app = FastAPI(title="FedShield aggregator", version="v1",
                  description="Receives encrypted LoRA updates, sums them homomorphically, publishes aggregates.")
    app.add_middleware(Guard, auth=auth, known=coordinator.config.silo_names,
                       rate=RateLimiter(limits.silo_requests_per_s, limits.silo_request_burst),
                       observers=RateLimiter(limits.observer_requests_per_s, limits.observer_burst, "status requests"))
    tmp_dir = coordinator.store.root / "incoming"
    tmp_dir.mkdir(exist_ok=True)

    def joined_caller(request: Request) -> str | None:
        """The caller, which must have joined (when identities are required)."""
        silo = caller(request)
        if auth.required and silo not in coordinator.store.silos():
            raise ApiError(403, "not_joined", f"silo {silo!r} has not joined: join first")
        return silo

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        if exc.status != 425:
            metrics.UPLOADS_REJECTED.labels(exc.code).inc()
        return JSONResponse(ErrorBody(error=exc.code, detail=exc.detail).model_dump(), status_code=exc.status)

    @app.exception_handler(Busy)
    async def _busy(_: Request, exc: Busy) -> JSONResponse:
        metrics.UPLOADS_REJECTED.labels(exc.code).inc()
        return JSONResponse(ErrorBody(error=exc.code, detail=exc.detail).model_dump(), status_code=exc.status,
                            headers={"Retry-After": exc.retry_after})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(ErrorBody(error=code, detail=str(exc.detail)).model_dump(), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        detail = f"{where}: {first.get('msg', 'invalid request')}"
        return JSONResponse(ErrorBody(error="malformed_request", detail=detail).model_dump(), status_code=422)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready", "state": coordinator.plan().state}

    @app.post("/v1/join", response_model=RoundPlan, responses=ERRORS)
    def join(req: JoinRequest, request: Request) -> RoundPlan:
        caller(request, req.silo)
        return coordinator.join(req)

    @app.post("/v1/silos/{silo}/withdraw", response_model=RoundPlan, responses=ERRORS)
    def withdraw(silo: str, req: WithdrawRequest, request: Request) -> RoundPlan:
        """The silo stops contributing (its privacy budget is spent, or its operator says so)."""
        caller(request, silo)
        return coordinator.withdraw(silo, req.reason)

    @app.get("/v1/plan", response_model=RoundPlan, responses=ERRORS)
    def plan(request: Request) -> RoundPlan:
        joined_caller(request)
        return coordinator.plan()

    @app.get("/v1/status", response_model=Status, responses=ERRORS)
    def status(request: Request, closed_from: Annotated[int | None, Query(ge=0, le=MAX_ROUND)] = None,
               limit: Annotated[int, Query(ge=1, le=STATUS_PAGE)] = STATUS_PAGE) -> Status:
        """The federation's progress: a summary and one page of closed rounds (``closed_from``, ``limit``).

        A silo sees its own reports; an observer without an identity (the operator) neither reports, sample
        counts nor the plan's details (mask seed, layout, weights)."""
        silo = caller(request)
        current = coordinator.status(viewer=silo, everything=not auth.required, closed_from=closed_from, limit=limit)
        if auth.required and silo not in coordinator.store.silos():
            hidden = {"mask_seed": None, "layout": None, "weights": {}, "lr_scales": {}}
            current = current.model_copy(update={"plan": current.plan.model_copy(update=hidden)})
        return current

    @app.put(
        "/v1/rounds/{round}/uploads/{silo}", response_model=UploadReceipt, responses=ERRORS,
        openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    )
    async def upload(round: Round, silo: str, request: Request, samples: Annotated[int, Query(ge=1, le=MAX_INT)],
                     train_loss: Finite = None, val_loss: Finite = None, val_auc: Finite = None,
                     epsilon: Finite = None) -> UploadReceipt:
        """Upload a silo's encrypted update (an envelope) with its plaintext metadata."""
        caller(request, silo)
        try:
            metadata = UploadMetadata(samples=samples, train_loss=train_loss, val_loss=val_loss, val_auc=val_auc, epsilon=epsilon)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise ApiError(422, "malformed_request", f"{where}: {first.get('msg')}") from None
        if silo in coordinator.config.silo_names:
            coordinator.check_metadata(silo, metadata)  # before the body: a refused claim costs no bytes
            upload_rate.take(silo)  # bounded keys: configured silos only
        with slots.hold(silo if silo in coordinator.config.silo_names else None):
            return await _receive(round, silo, request, metadata)

    async def _receive(round: int, silo: str, request: Request, metadata: UploadMetadata) -> UploadReceipt:
        path = await _spool(request, upload_limit(coordinator))
        receipt = await run_in_threadpool(coordinator.accept_upload, round, silo, path, metadata)
        if not receipt.duplicate:
            metrics.UPLOADS_ACCEPTED.labels(silo).inc()
            metrics.UPLOAD_BYTES.labels(silo).inc(receipt.bytes)
        return receipt

    async def _spool(request: Request, limit: int) -> Path:
        """Stream the request body to a temporary file, refusing it past ``limit`` bytes."""
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise ApiError(413, "payload_too_large", f"upload of {declared} bytes exceeds the limit of {limit}")
        fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=".part")
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
                    except asyncio.TimeoutError:
                        raise ApiError(408, "body_timeout", f"the upload body arrived too slowly ({received} bytes so far)") from None
                    received += len(chunk)
                    if received > limit:
                        raise ApiError(413, "payload_too_large", f"upload exceeds the limit of {limit} bytes")
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    @app.get("/v1/rounds/{round}/aggregate", responses={200: {"content": {"application/octet-stream": {}}}, **ERRORS})
    def aggregate(round: Round, request: Request) -> FileResponse:
        """The round's aggregate envelope (425 while the round is open). Individual uploads are never served."""
        silo = joined_caller(request)
        return FileResponse(coordinator.aggregate_path(round, silo), media_type="application/octet-stream")

    @app.get("/v1/unlearning", response_model=list[UnlearningRecord], responses=ERRORS)
    def unlearnings(request: Request) -> list[UnlearningRecord]:
        """The audit records of every published unlearning, oldest first (joined silos and observers)."""
        if not request.scope.get(OBSERVER):
            joined_caller(request)
        return coordinator.unlearnings()

    @app.put(
        "/v1/unlearning/{version}/uploads/{silo}", response_model=UploadReceipt, responses=ERRORS,
        openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    )
    async def upload_unlearning(version: Round, silo: str, request: Request) -> UploadReceipt:
        """A silo's encrypted replacement of the global adapter (E2URec), published as the next global state.

        The audit record travels as JSON in the ``x-fedshield-audit`` header."""
        caller(request, silo)
        try:
            audit = UnlearningAudit.model_validate_json(request.headers.get(AUDIT_HEADER) or "")
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ApiError(422, "malformed_audit", f"{'.'.join(map(str, first.get('loc', ()))) or AUDIT_HEADER}: {first.get('msg')}") from None
        if silo in coordinator.config.silo_names:
            upload_rate.take(silo)
        with slots.hold(silo if silo in coordinator.config.silo_names else None):
            path = await _spool(request, replacement_limit(coordinator))
            return await run_in_threadpool(coordinator.accept_unlearning, version, silo, path, audit)

    @app.get("/v1/unlearning/pending", response_model=list[PendingUnlearning], responses=ERRORS)
    def pending_unlearnings(request: Request) -> list[PendingUnlearning]:
        """Unlearnings uploaded but waiting for other silos' approval (``privacy.unlearning_approvals``)."""
        joined_caller(request)
        return coordinator.pending_unlearnings()

    @app.post("/v1/unlearning/{version}/approvals/{silo}", response_model=PendingUnlearning, responses=ERRORS)
    def approve_unlearning(version: Round, silo: str, req: ApprovalRequest, request: Request) -> PendingUnlearning:
        """Silo ``silo`` approves pending unlearning ``version`` (exactly the bytes with this SHA-256)."""
        caller(request, silo)
        return coordinator.approve_unlearning(version, silo, req.sha256)

    @app.get("/v1/unlearning/{version}/aggregate", responses={200: {"content": {"application/octet-stream": {}}}, **ERRORS})
    def unlearning_aggregate(version: Round, request: Request) -> FileResponse:
        """A published unlearning, to apply like an aggregate."""
        joined_caller(request)
        return FileResponse(coordinator.unlearning_path(version), media_type="application/octet-stream")

    return app


def uvicorn_options(config: FederationConfig, tls: ServerTLS | None = None) -> dict:
    """Server options every aggregator runs with: TLS when given, a header deadline and a short keep-alive."""
    options = uvicorn_ssl_options(tls)
    base = options.get("http", H11Protocol)
    return {**options, "http": header_deadline_protocol(config.limits.header_timeout_s, base), "timeout_keep_alive": 5}


def serve(config: FederationConfig, public_keys: Keys, state_dir: str | Path, host: str = "127.0.0.1", port: int | None = None,
          tls: ServerTLS | None = None, auth: Authenticator | None = None) -> None:
    """Run the aggregator until interrupted (HTTPS when ``tls`` is given)."""
    coordinator = Coordinator(config, public_keys, Store(state_dir))  # Store refuses a state dir another process holds
    metrics.serve_metrics(config.aggregator_metrics_port)
    stop = threading.Event()

    def ticker() -> None:
        while not stop.wait(0.5):
            try:
                coordinator.tick()
            except Exception:  # keep ticking; the error is logged
                log.exception("closing the round failed")

    threading.Thread(target=ticker, name="round-deadline", daemon=True).start()
    try:
        uvicorn.run(create_app(coordinator, auth), host=host, port=port or config.aggregator_port, log_level="warning",
                    **uvicorn_options(config, tls))
    finally:
        stop.set()
