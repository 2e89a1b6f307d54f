"""How the operator talks to aggregators (read-only: /v1/status and /v1/unlearning).

An aggregator runs an image a tenant chose, so its answers are untrusted input: each read
has an overall deadline and a size cap, and anything over either is treated as no answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl

import httpx

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
    except (httpx.HTTPError, ValueError, TooLarge, asyncio.TimeoutError, ssl.SSLError, OSError):
        return None
