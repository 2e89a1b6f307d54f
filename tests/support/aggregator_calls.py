"""Calls a test makes on a running aggregator: joining, uploads, the federation they belong to."""

from __future__ import annotations

import httpx
import numpy as np

from fedshield.config import AggregationSpec, FederationConfig, LimitsSpec, SiloSpec
from fedshield.crypto import encrypt_update
from fedshield.updates import kept_count

SIZE, LAYOUT = 3000, "layout-1"
SILOS = ("bank-a", "bank-b")
SAMPLES = {"bank-a": 300, "bank-b": 100, "bank-c": 100}


def config(silos: tuple[str, ...] = SILOS, **kw) -> FederationConfig:
    """The test federation; its spec declares each silo's samples (weights come from there, not from claims)."""
    kw.setdefault("limits", LimitsSpec(aggregate_wait_s=0.0))  # an open round's aggregate: 425 at once, no long poll
    return FederationConfig(silos=tuple(SiloSpec(name=n, samples=SAMPLES[n]) for n in silos), rounds=2,
                            aggregation=AggregationSpec(min_silos=2, round_deadline_seconds=kw.pop("deadline", 600)), **kw)


def join_all(url: str, silos: tuple[str, ...] = SILOS) -> dict:
    for silo in silos:
        r = httpx.post(f"{url}/v1/join", json={"silo": silo, "samples": SAMPLES[silo], "vector_size": SIZE, "layout": LAYOUT})
        assert r.status_code == 200, r.text
    return r.json()


def make_upload(keys, silo: str, plan: dict, round: int = 0, seed: int = 0, **kw) -> tuple[bytes, np.ndarray]:
    values = np.random.default_rng(seed).uniform(-1e-2, 1e-2, kept_count(SIZE, plan["pruning"]))
    up = encrypt_update(keys, values, weight=plan["weights"][silo], round=round, silo=kw.pop("as_silo", silo), layout=LAYOUT, **kw)
    return up.data, up.sent


def put(url: str, round: int, silo: str, data: bytes, **headers) -> httpx.Response:
    return httpx.put(f"{url}/v1/rounds/{round}/uploads/{silo}", content=data, params={"samples": SAMPLES.get(silo, 1)},
                     headers={"content-type": "application/octet-stream", **headers})
