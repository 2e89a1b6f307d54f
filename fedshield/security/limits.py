"""Admission limits of the aggregator: concurrent uploads and per-silo request rates."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Busy(Exception):
    """Refused for now; ``retry_after_s`` says when trying again makes sense."""

    def __init__(self, status: int, code: str, retry_after_s: float, detail: str):
        super().__init__(detail)
        self.status, self.code, self.retry_after_s, self.detail = status, code, retry_after_s, detail

    @property
    def retry_after(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s)))


class UploadSlots:
    """At most ``limit`` uploads stream or are checked at once, and one per silo; the next one is refused, not queued.

    One slow silo can so hold one slot, never all of them."""

    def __init__(self, limit: int, retry_after_s: float = 1.0):
        self.limit, self.retry_after_s = limit, retry_after_s
        self._free = threading.BoundedSemaphore(limit)
        self._holders: set[str] = set()
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, key: str | None = None) -> Iterator[None]:
        with self._lock:
            if key is not None and key in self._holders:
                raise Busy(429, "upload_in_progress", self.retry_after_s, f"{key!r} already has an upload in progress")
            if not self._free.acquire(blocking=False):
                raise Busy(503, "too_many_uploads", self.retry_after_s, f"{self.limit} uploads are already in progress")
            if key is not None:
                self._holders.add(key)
        try:
            yield
        finally:
            with self._lock:
                self._holders.discard(key)
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
