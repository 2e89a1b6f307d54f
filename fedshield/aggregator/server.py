"""The aggregator's HTTP API (FastAPI; OpenAPI at /openapi.json, docs at /docs)."""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from .. import metrics
from ..config import FederationConfig
from ..crypto import Keys
from ..crypto.envelope import max_ciphertext_bytes
from ..wire.messages import ErrorBody, JoinRequest, RoundPlan, Status, UploadMetadata, UploadReceipt, WithdrawRequest
from .rounds import ApiError, Coordinator
from .store import Store

log = logging.getLogger("fedshield.aggregator")
ERRORS = {400: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}, 409: {"model": ErrorBody},
          413: {"model": ErrorBody}, 422: {"model": ErrorBody}, 425: {"model": ErrorBody}}
ENVELOPE_SLACK = 64 * 1024


def upload_limit(coordinator: Coordinator) -> int:
    """Largest acceptable upload: the envelope a valid update of this federation can be, or the config cap."""
    plan = coordinator.plan()
    cap = coordinator.config.max_upload_bytes
    if plan.kept is None:
        return cap
    packing, ckks = coordinator.config.packing(), coordinator.keys.params
    expected = packing.ciphertexts_for(plan.kept, ckks) * (max_ciphertext_bytes(ckks) + 4) + ENVELOPE_SLACK
    return min(cap, expected)


def create_app(coordinator: Coordinator) -> FastAPI:
    app = FastAPI(title="FedShield aggregator", version="v1",
                  description="Receives encrypted LoRA updates, sums them homomorphically, publishes aggregates.")
    tmp_dir = coordinator.store.root / "incoming"
    tmp_dir.mkdir(exist_ok=True)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        if exc.status != 425:
            metrics.UPLOADS_REJECTED.labels(exc.code).inc()
        return JSONResponse(ErrorBody(error=exc.code, detail=exc.detail).model_dump(), status_code=exc.status)

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
    def join(req: JoinRequest) -> RoundPlan:
        return coordinator.join(req)

    @app.post("/v1/silos/{silo}/withdraw", response_model=RoundPlan, responses=ERRORS)
    def withdraw(silo: str, req: WithdrawRequest) -> RoundPlan:
        """The silo stops contributing (its privacy budget is spent, or its operator says so)."""
        return coordinator.withdraw(silo, req.reason)

    @app.get("/v1/plan", response_model=RoundPlan)
    def plan() -> RoundPlan:
        return coordinator.plan()

    @app.get("/v1/status", response_model=Status)
    def status() -> Status:
        return coordinator.status()

    @app.put(
        "/v1/rounds/{round}/uploads/{silo}", response_model=UploadReceipt, responses=ERRORS,
        openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    )
    async def upload(round: int, silo: str, request: Request, samples: int, train_loss: float | None = None,
                     val_loss: float | None = None, val_auc: float | None = None, epsilon: float | None = None) -> UploadReceipt:
        """Upload a silo's encrypted update (an envelope) with its plaintext metadata."""
        metadata = UploadMetadata(samples=samples, train_loss=train_loss, val_loss=val_loss, val_auc=val_auc, epsilon=epsilon)
        limit = upload_limit(coordinator)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise ApiError(413, "payload_too_large", f"upload of {declared} bytes exceeds the limit of {limit}")
        fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=".part")
        path, received = Path(name), 0
        try:
            with open(fd, "wb") as fh:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > limit:
                        raise ApiError(413, "payload_too_large", f"upload exceeds the limit of {limit} bytes")
                    fh.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        receipt = await run_in_threadpool(coordinator.accept_upload, round, silo, path, metadata)
        if not receipt.duplicate:
            metrics.UPLOADS_ACCEPTED.labels(silo).inc()
            metrics.UPLOAD_BYTES.labels(silo).inc(receipt.bytes)
        plan = coordinator.plan()
        metrics.CURRENT_ROUND.set(plan.round)
        return receipt

    @app.get("/v1/rounds/{round}/aggregate", responses={200: {"content": {"application/octet-stream": {}}}, **ERRORS})
    def aggregate(round: int) -> FileResponse:
        """The round's aggregate envelope (425 while the round is open)."""
        return FileResponse(coordinator.aggregate_path(round), media_type="application/octet-stream")

    return app


def serve(config: FederationConfig, public_keys: Keys, state_dir: str | Path, host: str = "127.0.0.1", port: int | None = None) -> None:
    """Run the aggregator until interrupted."""
    coordinator = Coordinator(config, public_keys, Store(state_dir))
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
        uvicorn.run(create_app(coordinator), host=host, port=port or config.aggregator_port, log_level="warning")
    finally:
        stop.set()
