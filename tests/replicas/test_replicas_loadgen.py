"""The load generator's retry rule: once, and only when no byte of a response came back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.replicas.replica_load import LoadGenerator

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
Behaviour = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
RawServer = Callable[[Behaviour], Awaitable[int]]


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    """A raw TCP server; ``behaviour(n, ...)`` decides what connection number ``n`` gets."""
    servers: list[asyncio.Server] = []

    async def start(behaviour: Behaviour) -> int:
        count = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal count
            count += 1
            await reader.readuntil(b"\r\n\r\n")
            await behaviour(count, reader, writer)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def _judge(status: int, headers: dict[str, str], body: bytes) -> str:
    assert status == 200
    return body.decode()


async def _one_request(port: int) -> LoadGenerator:
    load = LoadGenerator("127.0.0.1", port, "/", ["c=1"], _judge, max_requests=1)
    await load.run()
    return load


async def test_closed_before_any_byte_is_retried_once(raw_server: RawServer) -> None:
    """A connection closed without a response byte is retried once on a new connection."""

    async def first_drops(n: int, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if n > 1:
            w.write(OK)

    load = await _one_request(await raw_server(first_drops))
    assert (load.result.sent, load.result.succeeded, load.result.retried) == (1, 1, 1)
    assert load.result.failures == []


async def test_second_drop_is_a_failure(raw_server: RawServer) -> None:
    """Only one retry: a second connection closed without a response is a failure."""

    async def always_drops(n: int, _r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
        return None

    load = await _one_request(await raw_server(always_drops))
    assert (load.result.succeeded, load.result.retried) == (0, 1)
    assert len(load.result.failures) == 1


async def test_response_cut_off_midway_is_not_retried(raw_server: RawServer) -> None:
    """A response that started and then broke off is a failure, never sent again."""

    async def cuts_off(n: int, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(OK[:20])

    load = await _one_request(await raw_server(cuts_off))
    assert (load.result.succeeded, load.result.retried) == (0, 0)
    assert len(load.result.failures) == 1
