"""Fixtures shared by every test area: a real upstream and a gateway in front of it.

Every test is also marked ``unit``, ``integration`` or ``browser`` here, by the
rule in tests/support/markers.py (``./dev test -m unit`` runs the quick part).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.config import GatewayConfig, parse_config
from gateway.store.base import Store
from gateway.store.factory import StoreSettings, create_store
from gateway.store.memory import MemoryStore
from tests.support.clock import FakeClock
from tests.support.markers import forbid_peers, kind_of
from tests.support.redis import RedisServer, redis_server  # noqa: F401 (fixture)
from tests.support.upstream import UPSTREAM_LOG, UpstreamLog, build_upstream_app


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(kind_of(item))


@pytest.fixture(autouse=True)
def _unit_tests_start_no_peers(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A test marked unit that starts a process or listens on a socket fails, naming the rule."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    with forbid_peers(monkeypatch):
        yield


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A fresh, empty store of each implementation (Redis: a real server on a free port)."""
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        s = create_store(StoreSettings(url=server.url), environ={})
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at a fixed moment; it moves only when the test says (``FakeClock``)."""
    return FakeClock()


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    """A real HTTP upstream on loopback (see tests/support/upstream.py)."""
    return await aiohttp_server(build_upstream_app())


@pytest.fixture
def upstream_log(upstream: TestServer) -> UpstreamLog:
    return upstream.app[UPSTREAM_LOG]


def make_config(data: dict[str, Any], environ: dict[str, str] | None = None) -> GatewayConfig:
    """Validate a config dict exactly as a file would be validated."""
    return parse_config(yaml.safe_dump(data), file="<test>", environ=environ or {})


GatewayFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def gateway(
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
    upstream: TestServer,
) -> GatewayFactory:
    """Build a gateway client; routes default to one public catch-all to ``upstream``."""

    async def factory(
        routes: list[dict[str, Any]] | None = None, **sections: Any
    ) -> TestClient[web.Request, web.Application]:
        base = str(upstream.make_url("/")).rstrip("/")
        if routes is None:
            routes = [{"name": "all", "match": {"path": "/"}, "upstream": base, "policy": "public"}]
        for route in routes:
            route.setdefault("upstream", base)
        data: dict[str, Any] = {"routes": routes, **sections}
        data.setdefault("server", {}).setdefault("config_poll_seconds", 0)
        config = make_config(data)
        return await aiohttp_client(build_app(config, configure_logs=False))

    return factory
