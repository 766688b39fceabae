"""Fixtures for the store contract: every test runs against each backend."""

from __future__ import annotations

from tests.support.redis import RedisServer, redis_server  # noqa: F401 (fixture)
