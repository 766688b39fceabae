"""Fixtures for the store contract: every test runs against each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.store.base import Store
from gateway.store.memory import MemoryStore

BACKENDS = ["memory"]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A fresh, empty store of each implementation."""
    s: Store = MemoryStore()
    try:
        yield s
    finally:
        await s.close()
