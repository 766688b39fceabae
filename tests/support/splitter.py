"""A small round-robin TCP splitter: the load balancer in front of several replicas in tests.

It accepts connections on one loopback port and pipes each NEW connection to
the next backend in turn (a connection stays on its backend for its whole
life, as with an L4 load balancer and HTTP keep-alive). A backend that refuses
the connection is skipped. With ``health_path`` set, it also polls every
backend's readiness endpoint (``GET health_path``, 200 = ready) every
``health_interval`` seconds, like a load balancer's health check, and routes
new connections only to backends whose last check passed; a draining gateway
(readiness 503 after SIGTERM) therefore gets no new connections.

    async with Splitter([("127.0.0.1", 8001), ("127.0.0.1", 8002)],
                        health_path="/_gateway/readyz") as splitter:
        ... clients talk to splitter.url ...
    splitter.routed   # connections handed to each backend

Bounded: at most ``max_connections`` client connections at once (more are
closed at once and counted in ``rejected``); ``close()`` stops accepting,
cancels every pipe and health check, and waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from types import TracebackType

_CHUNK = 65536


class Splitter:
    """Round-robin TCP forwarding to ``backends`` (host, port), optionally health-checked."""

    def __init__(
        self,
        backends: Sequence[tuple[str, int]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        health_path: str | None = None,
        health_interval: float = 0.1,
        health_timeout: float = 1.0,
        connect_timeout: float = 1.0,
        max_connections: int = 512,
    ) -> None:
        if not backends:
            raise ValueError("at least one backend")
        self.backends = list(backends)
        self.host = host
        self.port = port
        self.health_path = health_path
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        # Without health checks every backend counts as ready; refusals still skip it.
        self.ready = [health_path is None] * len(self.backends)
        self.routed = [0] * len(self.backends)
        self.rejected = 0  # closed at once: over the bound, or no backend took it
        self._next = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._health: list[asyncio.Task[None]] = []
        self._open = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen, run one round of health checks, then keep checking in the background."""
        self._server = await asyncio.start_server(self._accepted, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        if self.health_path is not None:
            await asyncio.gather(*(self._check(i) for i in range(len(self.backends))))
            self._health = [
                asyncio.create_task(self._health_loop(i), name=f"splitter-health-{i}")
                for i in range(len(self.backends))
            ]

    async def close(self) -> None:
        """Stop accepting, end every pipe and health check, and wait for them."""
        if self._server is not None:
            self._server.close()
        tasks = [*self._health, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Splitter:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_ready(self, index: int, timeout: float = 20.0) -> None:
        """Wait until the splitter itself has seen backend ``index`` pass a health check."""
        async with asyncio.timeout(timeout):
            while not self.ready[index]:
                await asyncio.sleep(self.health_interval / 2)

    # -- health checks -----------------------------------------------------------------

    async def _health_loop(self, index: int) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await self._check(index)

    async def _check(self, index: int) -> None:
        host, port = self.backends[index]
        request = (
            f"GET {self.health_path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
        ).encode()
        ok = False
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.health_timeout):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(request)
                status_line = await reader.readline()
                ok = status_line.split(b" ", 2)[1:2] == [b"200"]
        except (OSError, TimeoutError, IndexError):
            ok = False
        finally:
            if writer is not None:
                await _close(writer)
        self.ready[index] = ok

    # -- forwarding --------------------------------------------------------------------

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self.max_connections:
            self.rejected += 1
            writer.close()
            return
        pipe = asyncio.create_task(self._serve(reader, writer))
        self._tasks.add(pipe)
        pipe.add_done_callback(self._tasks.discard)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The next ready backend that accepts a connection, round robin; None if none does."""
        count = len(self.backends)
        for _ in range(count):
            index = self._next
            self._next = (self._next + 1) % count
            if not self.ready[index]:
                continue
            host, port = self.backends[index]
            try:
                async with asyncio.timeout(self.connect_timeout):
                    pair = await asyncio.open_connection(host, port)
            except (OSError, TimeoutError):
                continue  # refused or unreachable: skip it, as a load balancer would
            self.routed[index] += 1
            return pair
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            pair = await self._connect()
            if pair is None:
                self.rejected += 1
                return
            upstream_reader, upstream_writer = pair
            to_backend = asyncio.create_task(_pump(reader, upstream_writer))
            to_client = asyncio.create_task(_pump(upstream_reader, writer))
            try:
                # Either side closing ends the connection: HTTP clients and servers
                # never half-close, and the backend's last bytes are flushed on close.
                await asyncio.wait({to_backend, to_client}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (to_backend, to_client):
                    task.cancel()
                await asyncio.gather(to_backend, to_client, return_exceptions=True)
        finally:
            self._open -= 1
            for w in (writer, upstream_writer):
                if w is not None:
                    await _close(w)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close after flushing what is buffered; abort if the peer stops reading."""
    writer.close()
    try:
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
    except (OSError, TimeoutError):
        writer.transport.abort()
