"""The ASGI guard in front of the aggregator's routes: who is calling, and their rate limit."""

from __future__ import annotations

import json

from .. import metrics
from ..security.auth import Authenticator
from ..security.limits import Busy, RateLimiter
from ..wire.errors import ErrorCode, error_body

IDENTITY = "fedshield.silo"  # scope key the guard sets: the authenticated silo, or None without authentication
OBSERVER = "fedshield.observer"  # scope key the guard sets for a certified observer
OPEN_PATHS = ("/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
# what a certified observer (Authenticator.observers) may GET, and nothing else
OBSERVER_READS = ("/v1/status", "/v1/unlearning", "/v1/unlearning/pending")
OBSERVER_LIMITED = ("/v1/status",)  # observer reads that share the observers' rate limit
OBSERVER_BUCKET = "observer"  # the one rate-limit bucket all observers share


class Guard:
    """ASGI middleware in front of every route but the open ones (health, API docs): authenticates the caller and applies
    its rate limit. Every /v1 route needs an identity: a silo's, or a certified observer's for status and the ledger.

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
            if scope["path"] in OBSERVER_LIMITED:
                try:
                    self.observers.take(OBSERVER_BUCKET)
                except Busy as exc:
                    return await busy_reply(send, exc)
            scope[IDENTITY], scope[OBSERVER] = None, True
            return await self.app(scope, receive, send)
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        silo, why = self.auth.identify(scope, header)
        if silo is None:
            return await reply(send, ErrorCode.UNAUTHENTICATED, why, {"www-authenticate": "Bearer"})
        if silo not in self.known:
            return await reply(send, ErrorCode.UNKNOWN_SILO, f"{silo!r} is not a silo of this federation")
        try:
            self.rate.take(silo)
        except Busy as exc:
            return await busy_reply(send, exc)
        scope[IDENTITY] = silo
        await self.app(scope, receive, send)


async def reply(send, code: ErrorCode, detail: str, headers: dict[str, str] | None = None, status: int | None = None) -> None:
    """Answer a refusal straight from ASGI (no route ran, no body was read)."""
    metrics.UPLOADS_REJECTED.labels(code).inc()
    body = json.dumps(error_body(code, detail)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status or code.status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def busy_reply(send, exc: Busy) -> None:
    await reply(send, ErrorCode(exc.code), exc.detail, {"retry-after": exc.retry_after}, exc.status)
