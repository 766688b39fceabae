"""Which kind each test is: ``unit``, ``integration`` or ``browser`` (tests/conftest.py applies it).

The rule, by what a test touches (README "Tests"):

- ``browser``: everything under ``tests/e2e/`` (headless Chromium against the demo).
- ``integration``: the test starts a process or a server, i.e. any of
  - it lives in a directory whose every test runs the gateway against real
    peers (``tests/flows/``, ``tests/replicas/``);
  - it uses, directly or through another fixture, a fixture that starts a
    real peer (``PEER_FIXTURES``: a Redis server, an HTTP server on loopback,
    the gateway behind a test client, the mandate registry), or the Redis
    parameter of the ``store`` fixture;
  - its module starts processes or servers itself: it imports ``subprocess``,
    aiohttp's test server or client, or a helper from one of
    ``PEER_MODULES`` (the process, Redis, nginx, simulator, upstream and
    world helpers of tests/support).
- ``unit``: everything else: values in, values out, at most an in-memory store.

A test marked explicitly (``@pytest.mark.integration``) keeps that mark: for a
test that starts a process through a helper the rule cannot see.

``unit`` is checked while it runs, too: a unit test that starts a process or
listens on a socket fails with a message naming this rule (``forbid_peers``).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NoReturn

import pytest

Kind = Literal["unit", "integration", "browser"]
KINDS: tuple[Kind, ...] = ("browser", "integration", "unit")

BROWSER_DIRS = ("e2e",)
INTEGRATION_DIRS = ("flows", "replicas")
PEER_FIXTURES = frozenset(
    {
        "redis_server",
        "aiohttp_server",
        "aiohttp_raw_server",
        "aiohttp_client",
        "upstream",
        "gateway",
        "registry",
        "token_gateway",
    }
)
PEER_MODULES = frozenset(
    {
        "aiohttp.test_utils",
        "tests.support.browser",
        "tests.support.compose_world",
        "tests.support.flood",
        "tests.support.kubernetes_world",
        "tests.support.login_world",
        "tests.support.nginx",
        "tests.support.processes",
        "tests.support.redis",
        "tests.support.registry",
        "tests.support.simulator",
        "tests.support.splitter",
        "tests.support.upstream",
    }
)

TESTS = Path(__file__).resolve().parents[1]


def _module_starts_peers(module: Any) -> bool:
    """The test module imports subprocess or a helper that starts a process or server."""
    for value in vars(module).values():
        if value is subprocess:
            return True
        if getattr(value, "__module__", None) in PEER_MODULES:
            return True
    return False


def kind_of(item: pytest.Item) -> Kind:
    """The kind of one collected test, by the rule in this module's docstring."""
    explicit = [k for k in KINDS if item.get_closest_marker(k) is not None]
    if explicit:
        return explicit[0]
    parts = Path(str(item.path)).resolve().relative_to(TESTS).parts
    if parts[0] in BROWSER_DIRS:
        return "browser"
    if parts[0] in INTEGRATION_DIRS:
        return "integration"
    if PEER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return "integration"
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("store") == "redis":
        return "integration"
    module = getattr(item, "module", None)
    if module is not None and _module_starts_peers(module):
        return "integration"
    return "unit"


def _refuse(what: str) -> NoReturn:
    raise AssertionError(
        f"a test marked unit {what}: it is an integration test "
        "(tests/support/markers.py says how tests are sorted)"
    )


@contextmanager
def forbid_peers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """While a unit test runs, starting a process or listening on a socket fails loudly."""

    def no_process(*args: object, **kwargs: object) -> NoReturn:
        _refuse(f"started a process: {args[0] if args else kwargs.get('args')!r}")

    real_listen = socket.socket.listen

    def no_listen(self: socket.socket, *args: int) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse("listened on a TCP socket")
        real_listen(self, *args)

    monkeypatch.setattr(subprocess, "Popen", no_process)
    monkeypatch.setattr(socket.socket, "listen", no_listen)
    yield
