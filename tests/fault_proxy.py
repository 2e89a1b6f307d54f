"""A fault-injecting TCP proxy on loopback: it forwards connections to a target and, per a
seeded schedule, delays data or cuts connections part-way (TLS passes through untouched)."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Faults:
    drop_rate: float = 0.0  # share of connections cut after a random number of bytes, of the request or of the response
    drop_after_max: int = 64 * 1024  # the cut happens within the first this-many bytes of that direction
    delay_rate: float = 0.0  # share of connections whose every chunk is delayed
    delay_s: float = 0.2
    seed: int = 0


class FaultProxy:
    """``with FaultProxy(target_port, Faults(...)) as proxy:`` then connect to ``proxy.port``."""

    def __init__(self, target_port: int, faults: Faults):
        self.target_port, self.faults = target_port, faults
        self._rng = random.Random(faults.seed)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.connections = self.dropped = self.delayed = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("fault proxy did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        drop_after = self._rng.randrange(1, self.faults.drop_after_max) if self._rng.random() < self.faults.drop_rate else None
        cut_response = self._rng.random() < 0.5  # else the request is cut (the aggregator may or may not have taken it)
        delay = self.faults.delay_s if self._rng.random() < self.faults.delay_rate else 0.0
        self.dropped += drop_after is not None
        self.delayed += delay > 0
        try:
            target_r, target_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int | None) -> None:
            """Copy one direction; when it ends (or is cut), abort the other side so both ends see it."""
            sent = 0
            try:
                while chunk := await reader.read(16 * 1024):
                    if delay:
                        await asyncio.sleep(delay)
                    if limit is not None and sent + len(chunk) >= limit:
                        writer.write(chunk[: limit - sent])  # the connection dies mid-request
                        break
                    writer.write(chunk)
                    sent += len(chunk)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                _abort(writer)

        await asyncio.gather(pipe(client_r, target_w, None if cut_response else drop_after),
                             pipe(target_r, client_w, drop_after if cut_response else None))


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
