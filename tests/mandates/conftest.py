"""Fixtures for the mandates tests: a real loopback registry and quick HTTP source settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.mandates import HttpSourceSettings
from tests.support.redis import RedisServer, redis_server  # noqa: F401 (fixture)
from tests.support.registry import RegistryServer


@pytest.fixture
async def registry() -> AsyncIterator[RegistryServer]:
    """A running registry server on 127.0.0.1 with one administrator and two mandates."""
    async with RegistryServer(hang_seconds=5) as server:
        server.add("11111111", employer_kvk="30000001", employer_name="Bakkerij", scopes=["a"])
        server.add("11111111", employer_kvk="30000002", employer_name="Smederij", status="revoked")
        yield server


def http_settings(registry: RegistryServer, **overrides: Any) -> HttpSourceSettings:
    """Settings with short timeouts and back-off so failure tests stay fast."""
    values: dict[str, Any] = {
        "url_template": registry.url_template,
        "allow_plain_http": True,
        "connect_timeout": 0.5,
        "read_timeout": 0.3,
        "total_timeout": 5.0,
        "max_attempts": 3,
        "backoff_base": 0.01,
        "backoff_max": 0.02,
        "breaker_failure_threshold": 5,
        "breaker_cooldown": 30.0,
    }
    values.update(overrides)
    return HttpSourceSettings(**values)
