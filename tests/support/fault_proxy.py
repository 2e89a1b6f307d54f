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
    drop_rate: float = 0.0  # chance, per chunk forwarded either way, that the connection is cut inside that chunk
    delay_rate: float = 0.0  # chance, per chunk, that it is held back ``delay_s`` first
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

    def __enter__(self) -> FaultProxy:
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
        try:
            target_r, target_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            """Copy one direction; when it ends (or is cut), abort the other side so both ends see it."""
            try:
                while chunk := await reader.read(16 * 1024):
                    if self._rng.random() < self.faults.delay_rate:
                        self.delayed += 1
                        await asyncio.sleep(self.faults.delay_s)
                    if self._rng.random() < self.faults.drop_rate:
                        self.dropped += 1
                        writer.write(chunk[: self._rng.randrange(len(chunk))])  # the connection dies mid-message
                        break
                    writer.write(chunk)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                _abort(writer)

        await asyncio.gather(pipe(client_r, target_w), pipe(target_r, client_w))


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
