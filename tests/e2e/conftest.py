"""Fixtures for the browser journeys: one demo stack per module, a fresh Chromium per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver

from tests.support.browser import RECHECK_SECONDS, DemoStack, chromium, chromium_available


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    """The demo as a person starts it, with a short mandate re-check interval."""
    stack = DemoStack(
        Path(tmp_path_factory.mktemp("demo-state")),
        env={"GATEWAY__SESSIONS__MANDATE_RECHECK_INTERVAL": str(RECHECK_SECONDS)},
    )
    try:
        stack.wait_ready()
        yield stack
        assert stack.stop() == 0
    finally:
        stack.cleanup()


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless Debian Chromium with a fresh profile (no cookies from other journeys)."""
    missing = chromium_available()
    if missing:
        # ./dev test installs chromium and chromium-driver; never skip silently.
        pytest.fail(f"browser tests need {missing}: run ./dev test (it installs them)")
    with chromium() as driver:
        yield driver
