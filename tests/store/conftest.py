"""Fixtures for the store contract: every test runs against each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.store.base import Store
from gateway.store.factory import StoreSettings, create_store
from gateway.store.memory import MemoryStore
from tests.support.redis import RedisServer, redis_server  # noqa: F401 (fixture)


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
