"""The test load balancer itself: round robin, skipping refusing and unready backends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.processes import free_port
from tests.support.splitter import Splitter

ServerFactory = Callable[..., Awaitable[TestServer]]
READY = web.AppKey("ready", dict)


def _backend(name: str) -> web.Application:
    app = web.Application()
    app[READY] = {"ok": True}

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=name)

    async def readyz(request: web.Request) -> web.Response:
        return web.Response(status=200 if request.app[READY]["ok"] else 503)

    app.router.add_get("/", hello)
    app.router.add_get("/readyz", readyz)
    return app


def _addr(server: TestServer) -> tuple[str, int]:
    assert server.port is not None
    return ("127.0.0.1", server.port)


async def _names(url: str, n: int) -> list[str]:
    # A new connection per request: the splitter balances connections, not requests.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        names = []
        for _ in range(n):
            async with session.get(url) as resp:
                names.append(await resp.text())
        return names


async def test_round_robin_skips_a_backend_that_refuses(aiohttp_server: ServerFactory) -> None:
    """New connections go to each backend in turn; a port that refuses is skipped."""
    a, b = await aiohttp_server(_backend("a")), await aiohttp_server(_backend("b"))
    dead = free_port()
    backends = [_addr(a), ("127.0.0.1", dead), _addr(b)]
    async with Splitter(backends) as splitter:
        assert await _names(splitter.url + "/", 6) == ["a", "b", "a", "b", "a", "b"]
        assert splitter.routed == [3, 0, 3]


async def test_unready_backend_gets_no_new_connections(aiohttp_server: ServerFactory) -> None:
    """With health checks, a backend whose readiness is 503 is left out until it is 200 again."""
    a, b = await aiohttp_server(_backend("a")), await aiohttp_server(_backend("b"))
    backends = [_addr(a), _addr(b)]
    async with Splitter(backends, health_path="/readyz", health_interval=0.05) as splitter:
        assert splitter.ready == [True, True]
        b.app[READY]["ok"] = False
        async with asyncio.timeout(5):
            while splitter.ready[1]:
                await asyncio.sleep(0.01)
        assert await _names(splitter.url + "/", 4) == ["a"] * 4
        b.app[READY]["ok"] = True
        await splitter.wait_ready(1, timeout=5)
        assert sorted(await _names(splitter.url + "/", 4)) == ["a", "a", "b", "b"]


async def test_keep_alive_connection_stays_on_its_backend(aiohttp_server: ServerFactory) -> None:
    """One client connection carries all its requests to one backend; close() ends it cleanly."""
    a, b = await aiohttp_server(_backend("a")), await aiohttp_server(_backend("b"))
    backends = [_addr(a), _addr(b)]
    splitter = Splitter(backends)
    await splitter.start()
    try:
        async with aiohttp.ClientSession() as session:
            names = []
            for _ in range(4):
                async with session.get(splitter.url + "/") as resp:
                    names.append(await resp.text())
            assert names == ["a"] * 4
            assert splitter.routed == [1, 0]
            await splitter.close()  # with the client's idle connection still open
            with_closed = await _names_or_error(session, splitter.url + "/")
            assert with_closed == "error"
    finally:
        await splitter.close()


async def _names_or_error(session: aiohttp.ClientSession, url: str) -> str:
    try:
        async with session.get(url) as resp:
            return await resp.text()
    except aiohttp.ClientError:
        return "error"
