"""A real aggregator (uvicorn on loopback) in a background thread, for API tests: plain HTTP, or TLS with identities."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from fedshield.aggregator.rounds import Coordinator
from fedshield.aggregator.server import create_app, uvicorn_options
from fedshield.aggregator.store import Store
from fedshield.config import FederationConfig
from fedshield.security.auth import Authenticator
from fedshield.security.tls import ServerTLS, client_context


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningAggregator:
    def __init__(self, config: FederationConfig, public_keys, state_dir: Path, tls: ServerTLS | None = None,
                 auth: Authenticator | None = None):
        self.coordinator = Coordinator(config, public_keys, Store(state_dir))
        self.port = free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        app = create_app(self.coordinator, auth)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                                    **uvicorn_options(config, tls)))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def client(self, cert: Path | None = None, key: Path | None = None, **kw) -> httpx.Client:
        """An HTTP client for this aggregator (trusting its CA; presenting ``cert`` when given)."""
        verify = client_context(self.tls.client_ca or self.tls.cert.parent / "ca.crt", cert, key) if self.tls else True
        return httpx.Client(base_url=self.url, verify=verify, **kw)

    def __enter__(self) -> RunningAggregator:
        self.thread.start()
        deadline = time.monotonic() + 10
        with self.client(timeout=0.5) as http:
            while time.monotonic() < deadline:
                try:
                    http.get("/healthz")
                    return self
                except httpx.TransportError:
                    time.sleep(0.05)
        raise TimeoutError("aggregator did not start")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.coordinator.store.close()
