"""A bounded HTTP/1.1 keep-alive load generator for rolling-restart tests (loopback only).

Written on raw asyncio streams rather than aiohttp's client so the retry rule
is explicit and counted: an idempotent GET is sent again ONCE, on a new
connection, only when the connection closed before any byte of the response
arrived (the server cannot have answered, e.g. a draining gateway closed an
idle keep-alive connection just as the request went out). That is what load
balancers and HTTP clients do (RFC 9112 section 9.3.1, aiohttp, nginx
``proxy_next_upstream error``). Anything else (an error status, a response
cut off midway, a timeout) is a failure and is not retried.

Each worker holds one keep-alive connection and one session cookie and sends
requests back to back with a short pause; ``run`` stops at ``stop``, after
``max_requests`` requests in all, or after ``max_seconds``, whichever comes
first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# (status, headers lower-cased, body) -> bucket name for counting, or raise AssertionError.
Judge = Callable[[int, dict[str, str], bytes], str]


class _NoResponse(Exception):
    """The connection ended before any byte of the response: safe to send again."""


@dataclass
class LoadResult:
    sent: int = 0  # requests started (a retry is the same request, counted in ``retried``)
    succeeded: int = 0
    retried: int = 0
    connections: int = 0
    failures: list[str] = field(default_factory=list)
    per_bucket: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> str:
        buckets = ", ".join(f"{k}={v}" for k, v in sorted(self.per_bucket.items()))
        return (
            f"{self.sent} requests in {self.seconds:.1f} s: {self.succeeded} succeeded, "
            f"{len(self.failures)} failed, {self.retried} retried once (closed before any "
            f"response byte), {self.connections} connections; per replica: {buckets}"
        )


class LoadGenerator:
    """``workers`` concurrent keep-alive clients GETting ``path`` with the given cookies."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        cookies: Sequence[str],
        judge: Judge,
        *,
        workers_per_cookie: int = 1,
        pause: float = 0.005,
        max_requests: int = 50_000,
        max_seconds: float = 60.0,
        request_timeout: float = 10.0,
    ) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("loopback only")
        self.host, self.port, self.path = host, port, path
        self.cookies = list(cookies)
        self.judge = judge
        self.workers_per_cookie = workers_per_cookie
        self.pause = pause
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.request_timeout = request_timeout
        self.result = LoadResult()
        self._stop = asyncio.Event()
        self._deadline = 0.0

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> LoadResult:
        started = time.monotonic()
        self._deadline = started + self.max_seconds
        workers = [
            self._worker(cookie) for cookie in self.cookies for _ in range(self.workers_per_cookie)
        ]
        await asyncio.gather(*workers)
        self.result.seconds = time.monotonic() - started
        return self.result

    def _done(self) -> bool:
        return (
            self._stop.is_set()
            or self.result.sent >= self.max_requests
            or time.monotonic() >= self._deadline
        )

    async def _worker(self, cookie: str) -> None:
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Cookie: {cookie}\r\nAccept: application/json\r\n\r\n"
        ).encode()
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while not self._done():
                self.result.sent += 1
                conn = await self._one(conn, request)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.pause)
        finally:
            if conn is not None:
                await _close(conn[1])

    async def _one(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, request: bytes
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Send one request (retrying once as described above); the connection to reuse."""
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(self.request_timeout):
                    if conn is None:
                        conn = await asyncio.open_connection(self.host, self.port)
                        self.result.connections += 1
                    status, headers, body = await _exchange(conn, request)
            except _NoResponse as exc:
                if conn is not None:
                    await _close(conn[1])
                conn = None
                if attempt == 1:
                    self.result.retried += 1
                    continue
                self.result.failures.append(f"no response twice: {exc}")
                return None
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                if conn is not None:
                    await _close(conn[1])
                self.result.failures.append(f"{type(exc).__name__}: {exc}")
                return None
            try:
                bucket = self.judge(status, headers, body)
            except AssertionError as exc:
                self.result.failures.append(f"status {status}: {exc}")
            else:
                self.result.succeeded += 1
                self.result.per_bucket[bucket] += 1
            if headers.get("connection", "").lower() == "close":
                await _close(conn[1])
                return None
            return conn
        raise AssertionError("unreachable")


async def _exchange(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes
) -> tuple[int, dict[str, str], bytes]:
    reader, writer = conn
    try:
        writer.write(request)
        await writer.drain()
        first = await reader.readline()
    except OSError as exc:  # reset or broken pipe before any response byte
        raise _NoResponse(f"{type(exc).__name__}") from exc
    if not first:
        raise _NoResponse("closed")
    if not first.endswith(b"\r\n"):
        raise ValueError("connection closed inside the status line")
    parts = first.split(b" ", 2)
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks.append(chunk[:-2])
        body = b"".join(chunks)
    else:
        body = await reader.read()
        headers["connection"] = "close"
    return status, headers, body


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
