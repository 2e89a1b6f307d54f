"""A real aggregator (uvicorn on loopback) in a background thread, for API tests."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from fedshield.aggregator.rounds import Coordinator
from fedshield.aggregator.server import create_app
from fedshield.aggregator.store import Store
from fedshield.config import FederationConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningAggregator:
    def __init__(self, config: FederationConfig, public_keys, state_dir: Path):
        self.coordinator = Coordinator(config, public_keys, Store(state_dir))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.coordinator), host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "RunningAggregator":
        self.thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/healthz", timeout=0.5)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise TimeoutError("aggregator did not start")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.coordinator.store.close()
