"""HTTP client a silo uses to talk to the aggregator: TLS, retries with backoff and jitter, idempotent calls.

Every call is safe to repeat: join and withdraw are idempotent at the aggregator, and a
re-sent upload of the same bytes is answered ``duplicate: true`` (counted once).
Two kinds of retry:

- failures (connection errors, 5xx other than 503): at most ``retries`` attempts, exponential
  backoff with full jitter, capped at ``max_backoff_s``;
- "busy" answers (429, or 503 with Retry-After: a limit, not a fault): waited out for up to
  ``busy_timeout_s``, each time at least the server's Retry-After plus jitter, so a crowd of
  silos refused together does not come back together.
"""

from __future__ import annotations

import email.utils
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import httpx

from .errors import ErrorBody, ErrorCode, parse_error
from .messages import JoinRequest, RoundPlan, UploadMetadata, UploadReceipt, WithdrawRequest
from .unlearning import AUDIT_HEADER, ApprovalRequest, PendingUnlearning, UnlearningAudit, UnlearningRecord

log = logging.getLogger("fedshield.client")
T = TypeVar("T")
BUSY = (429, 503)


class AggregatorRefused(RuntimeError):
    """The aggregator answered with a 4xx: retrying will not help. Match on :attr:`code`."""

    def __init__(self, status: int, body: ErrorBody):
        super().__init__(f"aggregator refused ({status} {body.error}): {body.detail}")
        self.status, self.body = status, body

    @property
    def code(self) -> ErrorCode:
        return self.body.error

    @property
    def detail(self) -> str:
        return self.body.detail


@dataclass(frozen=True)
class ClientSecurity:
    """How a silo proves who it is: mutual TLS (``ca`` + ``cert`` + ``key``) or a bearer token over TLS."""

    ca: str | Path | None = None
    cert: str | Path | None = None
    key: str | Path | None = None
    token: str | None = None

    def verify(self) -> ssl.SSLContext | bool:
        if self.ca is None:
            return True
        from ..security.tls import client_context

        return client_context(self.ca, self.cert, self.key)

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}


def retry_after_s(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class AggregatorClient:
    def __init__(self, base_url: str, timeout_s: float = 60.0, retries: int = 20, backoff_s: float = 0.25,
                 security: ClientSecurity | None = None, max_backoff_s: float = 30.0, busy_timeout_s: float = 900.0):
        security = security or ClientSecurity()
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, verify=security.verify(), headers=security.headers())
        self.retries, self.backoff_s, self.max_backoff_s, self.busy_timeout_s = retries, backoff_s, max_backoff_s, busy_timeout_s
        self.retried = 0  # attempts repeated (failures and busy answers), for benchmarks and logs

    def close(self) -> None:
        self._http.close()

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2**attempt))

    def _call(self, send: Callable[[], httpx.Response], sleep: Callable[[float], None] = time.sleep) -> httpx.Response:
        failures, busy_since = 0, None
        while True:
            try:
                response = send()
            except httpx.TransportError as exc:
                if failures >= self.retries:
                    raise
                log.warning("aggregator unreachable (%s); retrying", exc)
                delay = self._backoff(failures)
                failures += 1
            else:
                wait = retry_after_s(response)
                if response.status_code in BUSY and (wait is not None or response.status_code == 429):
                    busy_since = busy_since or time.monotonic()
                    if time.monotonic() - busy_since > self.busy_timeout_s:
                        return response
                    base = wait if wait is not None else self.backoff_s
                    delay = base + random.uniform(0, max(base, self.backoff_s))
                    log.info("aggregator busy (%d); retrying in %.2f s", response.status_code, delay)
                elif response.status_code < 500 and response.status_code != 408:  # 408: our body was too slow, try again
                    return response
                else:
                    if failures >= self.retries:
                        response.raise_for_status()
                    log.warning("aggregator error %d; retrying", response.status_code)
                    delay = self._backoff(failures)
                    failures += 1
            self.retried += 1
            sleep(delay)

    @staticmethod
    def _ok(response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise AggregatorRefused(response.status_code, parse_error(response.status_code, response.content))
        return response

    def join(self, request: JoinRequest) -> RoundPlan:
        response = self._ok(self._call(lambda: self._http.post("/v1/join", json=request.model_dump())))
        return RoundPlan.model_validate(response.json())

    def withdraw(self, silo: str, reason: str) -> RoundPlan:
        body = WithdrawRequest(reason=reason).model_dump()
        return RoundPlan.model_validate(self._ok(self._call(lambda: self._http.post(f"/v1/silos/{silo}/withdraw", json=body))).json())

    def plan(self, silo: str | None = None) -> RoundPlan:
        """The current plan; naming ``silo`` (this client's own) adds its warm-up weight where identities are not checked."""
        params = {"silo": silo} if silo is not None else None
        return RoundPlan.model_validate(self._ok(self._call(lambda: self._http.get("/v1/plan", params=params))).json())

    def wait_for_round(self, round: int, timeout_s: float = 3600.0, poll_s: float = 0.2, silo: str | None = None) -> RoundPlan:
        """Block until ``round`` is open (or the federation moved past it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            plan = self.plan(silo)
            if plan.state == "finished" or (plan.state == "open" and plan.round >= round):
                return plan
            if time.monotonic() > deadline:
                raise TimeoutError(f"round {round} did not open within {timeout_s} s")
            time.sleep(poll_s)

    def upload(self, round: int, silo: str, data: bytes | Path, metadata: UploadMetadata) -> UploadReceipt:
        """Send an envelope (bytes, or a file streamed from disk on every attempt); safe to repeat."""
        params = {k: v for k, v in metadata.model_dump().items() if v is not None}
        url = f"/v1/rounds/{round}/uploads/{silo}"
        headers = {"content-type": "application/octet-stream"}

        def send() -> httpx.Response:
            if isinstance(data, Path):
                with open(data, "rb") as fh:
                    return self._http.put(url, content=_chunks(fh), params=params,
                                          headers={**headers, "content-length": str(data.stat().st_size)})
            return self._http.put(url, content=data, params=params, headers=headers)

        response = self._ok(self._call(send))
        return UploadReceipt.model_validate(response.json())

    def aggregate(self, round: int, timeout_s: float = 3600.0, poll_s: float = 0.2,
                  sleep: Callable[[float], None] = time.sleep) -> bytes:
        """The round's aggregate envelope, waiting while the round is still open.

        The aggregator answers 425 with a Retry-After while the round is open; the client waits
        that long (plus up to 10% jitter, so waiting silos spread out), ``poll_s`` without one.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            response = self._call(lambda: self._http.get(f"/v1/rounds/{round}/aggregate"))
            if response.status_code != ErrorCode.ROUND_NOT_CLOSED.status:
                return self._ok(response).content
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"round {round} did not close within {timeout_s} s")
            wait = retry_after_s(response) or poll_s
            sleep(min(wait * (1 + 0.1 * random.random()), left))

    def unlearnings(self) -> list[UnlearningRecord]:
        """The federation's published unlearnings (audit records), oldest first."""
        response = self._ok(self._call(lambda: self._http.get("/v1/unlearning")))
        return [UnlearningRecord.model_validate(r) for r in response.json()]

    def unlearning_aggregate(self, version: int) -> bytes:
        return self._ok(self._call(lambda: self._http.get(f"/v1/unlearning/{version}/aggregate"))).content

    def pending_unlearnings(self) -> list[PendingUnlearning]:
        """Unlearnings waiting for approval by other silos."""
        response = self._ok(self._call(lambda: self._http.get("/v1/unlearning/pending")))
        return [PendingUnlearning.model_validate(r) for r in response.json()]

    def approve_unlearning(self, version: int, silo: str, sha256: str) -> PendingUnlearning:
        """Approve exactly the pending unlearning with this SHA-256 (as silo ``silo``); safe to repeat."""
        body = ApprovalRequest(sha256=sha256).model_dump()
        response = self._ok(self._call(lambda: self._http.post(f"/v1/unlearning/{version}/approvals/{silo}", json=body)))
        return PendingUnlearning.model_validate(response.json())

    def upload_unlearning(self, version: int, silo: str, data: bytes, audit: UnlearningAudit) -> UploadReceipt:
        """Send the encrypted replacement of the global adapter with its audit record; safe to repeat."""
        headers = {"content-type": "application/octet-stream", AUDIT_HEADER: audit.model_dump_json()}
        response = self._ok(self._call(lambda: self._http.put(f"/v1/unlearning/{version}/uploads/{silo}", content=data, headers=headers)))
        return UploadReceipt.model_validate(response.json())


def _chunks(fh: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := fh.read(size):
        yield chunk
