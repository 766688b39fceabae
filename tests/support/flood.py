"""A fast, bounded HTTP/1.1 request flood for tests (loopback only).

A login flood is tens of thousands of requests; aiohttp's client spends more
CPU per request than a cheap refusal costs the gateway, so the flood would
measure the client. This sends raw requests instead, ``pipeline`` at a time on
each of ``connections`` keep-alive connections (HTTP/1.1 pipelining: a server
answers them in order), spread round robin over ``targets`` the way a load
balancer would spread them over replicas, and counts the status codes.

Bounded: it stops after ``total`` requests or at ``deadline`` (monotonic
seconds), whichever comes first; each read waits at most ``read_timeout``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class FloodResult:
    sent: int = 0
    answered: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    samples: dict[int, tuple[dict[str, str], bytes]] = field(default_factory=dict)
    """One (headers, body) per status, for checking what a refusal looks like."""


async def flood(
    targets: Sequence[tuple[str, int]],
    request_for: Callable[[int], bytes],
    total: int,
    *,
    connections: int = 8,
    pipeline: int = 32,
    deadline: float,
    read_timeout: float = 30.0,
) -> FloodResult:
    """Send ``request_for(i)`` for i in range(total); see the module docstring."""
    for host, _ in targets:
        if host not in ("127.0.0.1", "::1"):
            raise ValueError("loopback only")
    result = FloodResult()
    started = time.monotonic()
    next_index = 0

    def take(n: int) -> range:
        nonlocal next_index
        if time.monotonic() >= deadline:
            return range(0)
        first = next_index
        next_index = min(total, next_index + n)
        return range(first, next_index)

    async def worker(host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while batch := take(pipeline):
                writer.write(b"".join(request_for(i) for i in batch))
                result.sent += len(batch)
                await writer.drain()
                for _ in batch:
                    async with asyncio.timeout(read_timeout):
                        status, headers, body = await _response(reader)
                    result.answered += 1
                    result.statuses[status] += 1
                    result.samples.setdefault(status, (headers, body))
                    if headers.get("connection", "").lower() == "close":
                        raise ConnectionError("server closed the connection mid-pipeline")
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            writer.close()
            try:
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            except (OSError, TimeoutError):
                writer.transport.abort()

    await asyncio.gather(
        *(worker(*targets[n % len(targets)]) for n in range(connections)),
    )
    result.seconds = time.monotonic() - started
    return result


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    headers: dict[str, str] = {}
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return status, headers, body
