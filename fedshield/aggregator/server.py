"""The aggregator's HTTP API (FastAPI; OpenAPI at /openapi.json, docs at /docs): the app, its server options, ``serve``.

The routes live in ``routes/`` (one router per resource), the guard in ``guard.py``, the state they share in
``state.py`` and the error answers in ``error_handlers.py``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from .. import metrics
from ..config import FederationConfig
from ..crypto import Keys
from ..security.auth import Authenticator
from ..security.limits import RateLimiter
from ..security.slowpeers import header_deadline_protocol
from ..security.tls import ServerTLS, uvicorn_ssl_options
from . import error_handlers
from .guard import Guard
from .rounds import Coordinator
from .routes import ROUTERS
from .state import AppState
from .store import Store

log = logging.getLogger("fedshield.aggregator")


def create_app(coordinator: Coordinator, auth: Authenticator | None = None) -> FastAPI:
    """The aggregator's app; with ``auth`` requiring identities, every /v1 route is bound to the calling silo."""
    auth = auth or Authenticator()
    limits = coordinator.config.limits
    app = FastAPI(title="FedShield aggregator", version="v1",
                  description="Receives encrypted LoRA updates, sums them homomorphically, publishes aggregates.")
    app.state.fedshield = AppState.create(coordinator, auth)
    app.add_middleware(Guard, auth=auth, known=coordinator.config.silo_names,
                       rate=RateLimiter(limits.silo_requests_per_s, limits.silo_request_burst),
                       observers=RateLimiter(limits.observer_requests_per_s, limits.observer_burst, "status requests"))
    error_handlers.install(app)
    for router in ROUTERS:
        app.include_router(router)
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
