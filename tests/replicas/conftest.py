"""Fixtures for the many-replicas tests: a real redis-server and three gateway processes.

``shared_world`` lives for a whole test module (starting three processes costs
seconds); tests that stop or restart replicas use the per-test ``world``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.replicas.replica_world import ReplicaWorld, replica_world
from tests.support.redis import RedisServer


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[ReplicaWorld]:
    with RedisServer() as redis:
        async with replica_world(tmp_path, redis) as w:
            yield w


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ReplicaWorld]:
    with RedisServer() as redis:
        async with replica_world(tmp_path_factory.mktemp("replicas"), redis) as w:
            yield w
