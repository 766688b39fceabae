"""A real fund registry server on loopback for tests: serves mandates, and misbehaves on cue.

Any area that needs the registry starts one of these instead of faking the
client::

    from tests.support.registry import RegistryServer

    async with RegistryServer(token="s3cret") as registry:
        registry.add("12345678", employer_kvk="87654321", employer_name="Bakkerij")
        settings = HttpSourceSettings(url_template=registry.url_template, allow_plain_http=True)
        registry.fail_next("503", times=2)   # the next two requests answer 503
        registry.always("reset")             # every request: connection reset
        registry.recover()                   # back to normal answers
        await registry.stop()                # connection refused (port kept)
        await registry.start()               # listening again on the same port

Behaviours (``fail_next``/``always``): ``"500"``, ``"502"``, ``"503"``, ``"504"``,
``"401"``, ``"403"`` (status with a small JSON body), ``"hang"`` (no answer
until ``hang_seconds`` pass: hits the client's read timeout), ``"stall_body"``
(headers and half a body, then silence), ``"reset"`` (TCP reset before any
answer), ``"malformed"`` (200 with invalid JSON), ``"wrong_schema"`` (200 with
JSON that breaks the contract), ``"other_admin"`` (200 for another
administrator). ``delay`` slows every answer. ``requests`` counts requests
that reached the server; ``last_headers`` holds the last request's headers.
The contract served is the one in ``docs/mandates.md``: ``GET
/api/administrators/{kvk}/mandates`` → 200 JSON, or 404 for an unknown
administrator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
from collections import deque
from types import TracebackType
from typing import Any

from aiohttp import web

_DEFAULT_RECORD: dict[str, Any] = {
    "status": "active",
    "valid_from": "2020-01-01",
    "valid_until": None,
    "fund_employer_number": None,
    "branch": None,
    "scopes": [],
}


class RegistryServer:
    """The fund's registry service, in-process on 127.0.0.1 (HTTP or HTTPS)."""

    def __init__(
        self,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        hang_seconds: float = 30.0,
    ) -> None:
        self.token = token
        self.ssl_context = ssl_context
        self.hang_seconds = hang_seconds
        self.mandates: dict[str, list[dict[str, Any]]] = {}
        self.delay = 0.0
        self.requests = 0
        self.last_headers: dict[str, str] = {}
        self._next: deque[str] = deque()
        self._always: str | None = None
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0

    # -- data --------------------------------------------------------------------

    def add(self, administrator_kvk: str, **record: Any) -> dict[str, Any]:
        """Register a mandate (JSON fields of the contract; sensible defaults filled in)."""
        full = {**_DEFAULT_RECORD, **record}
        self.mandates.setdefault(administrator_kvk, []).append(full)
        return full

    # -- behaviour ---------------------------------------------------------------

    def fail_next(self, behaviour: str, times: int = 1) -> None:
        self._next.extend([behaviour] * times)

    def always(self, behaviour: str) -> None:
        self._always = behaviour

    def recover(self) -> None:
        self._next.clear()
        self._always = None
        self.delay = 0.0

    # -- lifecycle ---------------------------------------------------------------

    @property
    def url_template(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        host = "localhost" if self.ssl_context else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}/api/administrators/{{kvk}}/mandates"

    async def start(self) -> None:
        """Listen (again) on the same port."""
        if self._runner is None:
            app = web.Application()
            app.router.add_get("/api/administrators/{kvk}/mandates", self._handle)
            self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
            await self._runner.setup()
        if self._site is None:
            if not self.port:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    self.port = s.getsockname()[1]
            self._site = web.TCPSite(
                self._runner,
                "127.0.0.1",
                self.port,
                ssl_context=self.ssl_context,
                reuse_address=True,
            )
            await self._site.start()

    async def stop(self) -> None:
        """Stop listening: new connections are refused until ``start()``."""
        if self._site is not None:
            site, self._site = self._site, None
            self._released.set()
            await site.stop()
            self._released = asyncio.Event()

    async def close(self) -> None:
        self._released.set()
        await self.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> RegistryServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the handler -------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), timeout=seconds)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.last_headers = dict(request.headers)
        behaviour = self._next.popleft() if self._next else self._always
        if self.delay:
            await self._pause(self.delay)
        kvk = request.match_info["kvk"]
        if behaviour is not None and behaviour.isdigit():
            return web.json_response({"error": behaviour}, status=int(behaviour))
        if behaviour == "hang":
            await self._pause(self.hang_seconds)
            return web.json_response({"error": "too late"}, status=503)
        if behaviour == "reset":
            transport = request.transport
            if transport is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    # SO_LINGER 0 makes close() send a TCP RST: a real connection reset.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            raise asyncio.CancelledError
        if (
            self.token is not None
            and request.headers.get("Authorization") != f"Bearer {self.token}"
        ):
            return web.json_response({"error": "unauthorised"}, status=401)
        if behaviour == "malformed":
            return web.Response(body=b'{"administrator_kvk": "', content_type="application/json")
        if behaviour == "wrong_schema":
            return web.json_response({"administrator_kvk": kvk, "mandates": [{"employer": 1}]})
        if behaviour == "other_admin":
            return web.json_response({"administrator_kvk": "00000000", "mandates": []})
        if kvk not in self.mandates:
            return web.json_response({"error": "unknown administrator"}, status=404)
        body = json.dumps({"administrator_kvk": kvk, "mandates": self.mandates[kvk]}).encode()
        if behaviour == "stall_body":
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            await self._pause(self.hang_seconds)
            return resp
        return web.Response(body=body, content_type="application/json")
