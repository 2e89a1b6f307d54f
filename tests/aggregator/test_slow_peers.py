"""Slow peers over real sockets: a connection that keeps trickling after its answer is closed."""

from __future__ import annotations

import socket
import time

import httpx
from support.aggregator_harness import RunningAggregator

from fedshield.config import FederationConfig, SiloSpec


def config(header_timeout_s: float) -> FederationConfig:
    base = FederationConfig(silos=(SiloSpec(name="bank-a"), SiloSpec(name="bank-b")), rounds=1)
    return base.model_copy(update={"limits": base.limits.model_copy(update={"header_timeout_s": header_timeout_s})})


def test_a_body_trickled_after_its_answer_is_cut_off(public_keys, tmp_path):
    with RunningAggregator(config(0.5), public_keys, tmp_path / "s") as agg:
        with socket.create_connection(("127.0.0.1", agg.port), timeout=5) as sock:
            sock.sendall(b"PUT /v1/nothing-here HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 10)
            assert sock.recv(200).startswith(b"HTTP/1.1 404")  # answered without reading the body
            start, closed = time.monotonic(), False
            while time.monotonic() - start < 4:  # a trickle of body bytes keeps uvicorn's keep-alive timer off
                time.sleep(0.1)
                try:
                    sock.sendall(b"x")
                except OSError:
                    closed = True
                    break
            if not closed:
                sock.settimeout(1)
                try:
                    closed = sock.recv(100) == b""
                except OSError:
                    closed = True
            assert closed and time.monotonic() - start < 3
        assert httpx.get(f"{agg.url}/healthz").status_code == 200


def test_a_keep_alive_connection_still_serves_its_next_request(public_keys, tmp_path):
    with RunningAggregator(config(0.5), public_keys, tmp_path / "s") as agg:
        with httpx.Client(base_url=agg.url) as http:
            for _ in range(3):
                assert http.put("/v1/nothing-here", content=b"x" * 1000).status_code == 404
                assert http.get("/healthz").status_code == 200
