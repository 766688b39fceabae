"""A tiny round-robin TCP splitter for the demo's ``--replicas``: one port, N gateways.

Each new client connection goes to the next replica in turn (a replica that
refuses is skipped); bytes are copied both ways until either side closes.
Enough to show that sessions live in the shared store, not in one process.
Not a production load balancer: no health checks, no PROXY protocol, no limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket

import structlog

log = structlog.get_logger("gateway_dev.demo")

_CHUNK = 64 * 1024


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RoundRobinSplitter:
    """Accept on one address; connect each client to the next target in turn."""

    def __init__(self, targets: list[tuple[str, int]]) -> None:
        if not targets:
            raise ValueError("at least one target")
        self.targets = list(targets)
        self._next = itertools.cycle(range(len(self.targets)))
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = [0] * len(self.targets)

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port."""
        self._server = await asyncio.start_server(self._accepted, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # Stopping the splitter cancels its open connections. Python 3.11's
            # stream server asks a cancelled handler task for its exception and
            # logs the CancelledError with a traceback; ending normally instead
            # is what a stopped connection is here.
            return
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(len(self.targets)):
            index = next(self._next)
            host, port = self.targets[index]
            try:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            except OSError:
                log.warning("splitter_target_refused", target=f"{host}:{port}")
                continue
            self.connections[index] += 1
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await up_writer.wait_closed()
            return

    async def close(self) -> None:
        """Stop accepting and cut open connections."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close: the other direction may still be sending
    except (ConnectionError, OSError):
        writer.close()
