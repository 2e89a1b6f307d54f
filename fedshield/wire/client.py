"""HTTP client a silo uses to talk to the aggregator: retries with backoff and jitter, idempotent calls."""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, TypeVar

import httpx

from .messages import ErrorBody, JoinRequest, RoundPlan, UploadMetadata, UploadReceipt, WithdrawRequest

log = logging.getLogger("fedshield.client")
T = TypeVar("T")


class AggregatorRefused(RuntimeError):
    """The aggregator answered with a 4xx: retrying will not help."""

    def __init__(self, status: int, body: ErrorBody):
        super().__init__(f"aggregator refused ({status} {body.error}): {body.detail}")
        self.status, self.body = status, body


class AggregatorClient:
    def __init__(self, base_url: str, timeout_s: float = 60.0, retries: int = 8, backoff_s: float = 0.25):
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s)
        self.retries, self.backoff_s = retries, backoff_s

    def close(self) -> None:
        self._http.close()

    def _call(self, send: Callable[[], httpx.Response]) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response = send()
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise
                log.warning("aggregator unreachable (%s); retrying", exc)
            else:
                if response.status_code < 500:
                    return response
                if attempt == self.retries:
                    response.raise_for_status()
                log.warning("aggregator error %d; retrying", response.status_code)
            time.sleep(self.backoff_s * 2**min(attempt, 5) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    @staticmethod
    def _ok(response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                body = ErrorBody.model_validate(response.json())
            except Exception:
                body = ErrorBody(error="http_error", detail=response.text[:500])
            raise AggregatorRefused(response.status_code, body)
        return response

    def join(self, request: JoinRequest) -> RoundPlan:
        response = self._ok(self._call(lambda: self._http.post("/v1/join", json=request.model_dump())))
        return RoundPlan.model_validate(response.json())

    def withdraw(self, silo: str, reason: str) -> RoundPlan:
        body = WithdrawRequest(reason=reason).model_dump()
        return RoundPlan.model_validate(self._ok(self._call(lambda: self._http.post(f"/v1/silos/{silo}/withdraw", json=body))).json())

    def plan(self) -> RoundPlan:
        return RoundPlan.model_validate(self._ok(self._call(lambda: self._http.get("/v1/plan"))).json())

    def wait_for_round(self, round: int, timeout_s: float = 3600.0, poll_s: float = 0.2) -> RoundPlan:
        """Block until ``round`` is open (or the federation moved past it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            plan = self.plan()
            if plan.state == "finished" or (plan.state == "open" and plan.round >= round):
                return plan
            if time.monotonic() > deadline:
                raise TimeoutError(f"round {round} did not open within {timeout_s} s")
            time.sleep(poll_s)

    def upload(self, round: int, silo: str, data: bytes, metadata: UploadMetadata) -> UploadReceipt:
        params = {k: v for k, v in metadata.model_dump().items() if v is not None}
        url = f"/v1/rounds/{round}/uploads/{silo}"
        headers = {"content-type": "application/octet-stream"}
        response = self._ok(self._call(lambda: self._http.put(url, content=data, params=params, headers=headers)))
        return UploadReceipt.model_validate(response.json())

    def aggregate(self, round: int, timeout_s: float = 3600.0, poll_s: float = 0.2) -> bytes:
        """The round's aggregate envelope, waiting while the round is still open."""
        deadline = time.monotonic() + timeout_s
        while True:
            response = self._call(lambda: self._http.get(f"/v1/rounds/{round}/aggregate"))
            if response.status_code != 425:
                return self._ok(response).content
            if time.monotonic() > deadline:
                raise TimeoutError(f"round {round} did not close within {timeout_s} s")
            time.sleep(poll_s)
