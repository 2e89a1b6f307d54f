"""How the operator talks to aggregators (read-only: /v1/status, /v1/unlearning and /v1/unlearning/pending).

An aggregator runs an image a tenant chose, so its answers are untrusted input: each read
has an overall deadline and a size cap, and anything over either is treated as no answer.
Answers are parsed here, at the edge, into the wire models (``Status``, ``UnlearningRecord``);
one that does not parse is no answer either.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from typing import TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError

from ..wire.messages import Status
from ..wire.unlearning import PendingUnlearning, UnlearningRecord

CA_ENV = "FEDSHIELD_AGGREGATOR_CA"
CERT_ENV, KEY_ENV = "FEDSHIELD_AGGREGATOR_CERT", "FEDSHIELD_AGGREGATOR_KEY"
MAX_BODY_BYTES = int(os.environ.get("FEDSHIELD_AGGREGATOR_MAX_BYTES", str(4 * 1024 * 1024)))
DEADLINE_S = float(os.environ.get("FEDSHIELD_AGGREGATOR_DEADLINE_S", "5"))


class TooLarge(Exception):
    """An aggregator's answer was larger than the operator reads."""


def aggregator_client(timeout_s: float = 3.0) -> httpx.AsyncClient:
    """An HTTP client that, for https aggregators, trusts the CA bundle at ``$FEDSHIELD_AGGREGATOR_CA`` and presents the
    operator's own client certificate (``$FEDSHIELD_AGGREGATOR_CERT`` / ``_KEY``) when given.

    The chart mounts the bundle from a ConfigMap (a CA certificate is public) and the operator's certificate from its
    own Secret into its own pod: the operator never reads a Secret through the API. With its certificate the operator is
    an observer at the aggregator: it may read status and the unlearning ledger, nothing else.
    """
    ca = os.environ.get(CA_ENV)
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
    cert = os.environ.get(CERT_ENV)
    if cert:
        if not isinstance(verify, ssl.SSLContext):
            verify = ssl.create_default_context()
        verify.load_cert_chain(cert, os.environ.get(KEY_ENV) or None)
    return httpx.AsyncClient(timeout=timeout_s, verify=verify)


async def _read_capped(client: httpx.AsyncClient, url: str, limit: int) -> tuple[int, bytes]:
    async with client.stream("GET", url) as response:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise TooLarge(declared)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise TooLarge(len(body))
        return response.status_code, bytes(body)


async def get_json(url: str, limit: int | None = None, deadline_s: float | None = None):
    """GET ``url`` and decode its JSON body; None when unreachable, refused, not JSON, larger than ``limit`` bytes or
    slower than ``deadline_s`` in all (a slow trickle cannot hold the operator)."""
    try:
        async with aggregator_client() as client:
            status, body = await asyncio.wait_for(_read_capped(client, url, MAX_BODY_BYTES if limit is None else limit),
                                                  DEADLINE_S if deadline_s is None else deadline_s)
        return json.loads(body) if status == 200 else None
    except (TimeoutError, httpx.HTTPError, ValueError, TooLarge, ssl.SSLError, OSError):
        return None


T = TypeVar("T")
STATUS = TypeAdapter(Status)
RECORDS = TypeAdapter(list[UnlearningRecord])
PENDING = TypeAdapter(list[PendingUnlearning])


async def fetch(url: str, shape: TypeAdapter[T]) -> T | None:
    """``GET url`` validated as ``shape``, or None when unreachable, over its limits or not of that shape."""
    body = await get_json(url)
    try:
        return shape.validate_python(body) if body is not None else None
    except ValidationError:
        return None


async def fetch_status(url: str) -> Status | None:
    """The aggregator's ``GET /v1/status``, or None when it is not reachable (yet) or its answer is no Status."""
    return await fetch(f"{url}/v1/status", STATUS)


async def fetch_unlearning_records(url: str) -> list[UnlearningRecord] | None:
    """The aggregator's ``GET /v1/unlearning`` (its audit records), or None when unreachable or not a ledger."""
    return await fetch(f"{url}/v1/unlearning", RECORDS)


async def fetch_pending_unlearnings(url: str) -> list[PendingUnlearning] | None:
    """The aggregator's ``GET /v1/unlearning/pending`` (uploads waiting for approval), or None when unreachable or malformed."""
    return await fetch(f"{url}/v1/unlearning/pending", PENDING)
