"""Connections that never finish their request headers, or that keep trickling the body of a request already answered
(a refusal sent before the body was read), are closed: uvicorn's own timers cover neither."""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadline(H11Protocol):
    """Mixed into uvicorn's h11 protocol (or a subclass of it): closing a connection whose request headers are not complete ``header_timeout_s``
    after it opened or after its previous response (a trickle of bytes does not extend the deadline)."""

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None
    _answered: bool = False  # answered while the request's body was still arriving: the rest must come within the deadline

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._answered:
            if self.conn.their_state is h11.IDLE:  # the answered body ended and the next request may begin
                self._answered = False
                self._arm_header_deadline()
        elif self.conn.their_state is not h11.IDLE:
            self._disarm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        self._answered = self.conn.their_state is not h11.IDLE
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline)

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if (self._answered or self.conn.their_state is h11.IDLE) and not self.transport.is_closing():
            self.transport.close()


def header_deadline_protocol(timeout_s: float, base: type[H11Protocol] = H11Protocol) -> type[H11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)``: ``base`` with this header deadline."""
    return type(f"HeaderDeadline{base.__name__}", (HeaderDeadline, base), {"header_timeout_s": timeout_s})
