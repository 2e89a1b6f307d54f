"""How the operator talks to aggregators (read-only: /v1/status and /v1/unlearning)."""

from __future__ import annotations

import os
import ssl

import httpx

CA_ENV = "FEDSHIELD_AGGREGATOR_CA"


def aggregator_client(timeout_s: float = 3.0) -> httpx.AsyncClient:
    """An HTTP client that, for https aggregators, trusts the CA bundle at ``$FEDSHIELD_AGGREGATOR_CA``.

    The chart mounts that bundle from a ConfigMap (a CA certificate is public): the operator
    never reads a Secret, and it calls only the endpoints open to observers.
    """
    ca = os.environ.get(CA_ENV)
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
    return httpx.AsyncClient(timeout=timeout_s, verify=verify)


async def get_json(url: str):
    """GET ``url`` and decode its JSON body; None when unreachable, refused or not JSON."""
    try:
        async with aggregator_client() as client:
            response = await client.get(url)
            return response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
