"""Admission limits of the aggregator: concurrent uploads and per-silo request rates."""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from typing import Iterator


class Busy(Exception):
    """Refused for now; ``retry_after_s`` says when trying again makes sense."""

    def __init__(self, status: int, code: str, retry_after_s: float, detail: str):
        super().__init__(detail)
        self.status, self.code, self.retry_after_s, self.detail = status, code, retry_after_s, detail

    @property
    def retry_after(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s)))


class UploadSlots:
    """At most ``limit`` uploads stream or are checked at once; the next one is refused, not queued."""

    def __init__(self, limit: int, retry_after_s: float = 1.0):
        self.limit, self.retry_after_s = limit, retry_after_s
        self._free = threading.BoundedSemaphore(limit)

    @contextmanager
    def hold(self) -> Iterator[None]:
        if not self._free.acquire(blocking=False):
            raise Busy(503, "too_many_uploads", self.retry_after_s, f"{self.limit} uploads are already in progress")
        try:
            yield
        finally:
            self._free.release()


class RateLimiter:
    """A token bucket per key: ``burst`` requests at once, refilled at ``per_s`` requests per second."""

    def __init__(self, per_s: float, burst: int, what: str = "requests"):
        self.per_s, self.burst, self.what = per_s, burst, what
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.per_s)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise Busy(429, "rate_limited", (1.0 - tokens) / self.per_s, f"{key!r} exceeds {self.per_s:g} {self.what} per second")
            self._buckets[key] = (tokens - 1.0, now)
