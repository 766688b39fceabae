"""The servers the comparison measures, each described by one small :class:`Target`.

A target says how to start its server, where it listens, which processes do
its work (their CPU is what a row reports) and, when it protects pages, how to
create authenticated sessions and logins for it. The rows it offers name a
kind of work:

* ``page``: GET the sample page (no session);
* ``auth``: GET the sample page with one of N sessions, rotated per request;
* ``login_start``: GET the URL that answers with a signed AuthnRequest redirect;
* ``login``: complete prepared logins, each usable once (artifact or signed Response).

Adding a row is writing one target module and listing it in :data:`TARGET_MODULES`:
for example an nginx in front of the gateway in forward-auth mode would start
both processes (pinned to the server core), return both pids from ``pids``,
and create sessions through :class:`bench.targets.gateway.GatewayInstance`.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bench.harness import OneShot, Processes, pinned, server_cpus

Kind = Literal["page", "auth", "login_start", "login"]

PAGE_PATH = "/werkgevers/30000001/overzicht?periode=2024-12"
"""What every row requests: an employer's page (the gateway checks the employer in the path)."""
PAGE_MARKER = b"bench-page-marker"
"""Text in the sample page, so a probe can tell the page from an error or a login page."""

BROWSER_HEADERS = (
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Accept: text/html,application/xhtml+xml",
    "Accept-Language: nl-NL,nl;q=0.9,en;q=0.5",
)
"""Headers a browser sends, the same for every row (cookies come on top)."""


def sample_page(size: int = 2048) -> bytes:
    """A legacy-portal-like HTML page of exactly ``size`` bytes."""
    head = (
        "<!doctype html><html lang=nl><head><meta charset=utf-8>"
        "<title>Werkgeversportaal: overzicht</title></head><body>"
        f"<!-- {PAGE_MARKER.decode()} --><h1>Overzicht werkgever 30000001</h1><table>"
    )
    tail = "</table></body></html>\n"
    room = size - len(head) - len(tail)
    body, i = "", 0
    while True:
        row = f"<tr><td>Werknemer {i:05d}</td><td>Pensioengevend loon</td><td>{i * 37}</td></tr>"
        if len(body) + len(row) > room:
            break
        body, i = body + row, i + 1
    body += " " * (room - len(body))
    return (head + body + tail).encode()


@dataclass(frozen=True)
class Row:
    """One line of the table: a kind of work against one target."""

    key: str
    """Short name for ``--rows`` (``nginx-static``, ``gw-auth-10k``)."""
    label: str
    target: str
    kind: Kind
    sessions: int = 0
    """``auth`` rows: how many sessions the requests rotate over."""
    compare_with: tuple[str, ...] = ()
    """Rows this one is compared with in the ratios (this row's req/s over theirs)."""
    min_seconds: float = 0
    """``auth`` rows: measure at least this long per round (not in ``--quick`` runs).

    The gateway writes a session's ``last_seen`` once per ``touch_interval``
    (30 s): a window at least that long after every session was visited holds
    one such write per session, the rate of steady traffic."""


class Env:
    """What targets share in one run: a folder, the cores, the upstream page, Redis, processes."""

    def __init__(
        self, *, quick: bool = False, session_cache: float | None = None, keep: bool = False
    ) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-compare-"))
        self.tmp.chmod(0o755)  # Apache drops root to www-data and must still read its files
        self.server_cpus, self.load_cpus = server_cpus()
        self.processes = Processes()
        self.quick = quick
        self.session_cache = session_cache
        self.keep = keep
        self.page = sample_page()
        self._upstream: str | None = None
        self._redis: object | None = None

    def folder(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o755)
        return path

    def server_cmd(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` pinned to the server core."""
        return pinned(cmd, self.server_cpus)

    @property
    def upstream_url(self) -> str:
        """The legacy portal every proxy forwards to: nginx serving the page, on the load side.

        nginx and not a Python server, so that the upstream never limits even
        nginx's own proxy row.
        """
        if self._upstream is None:
            from bench.targets.nginx import start_nginx

            port, _ = start_nginx(self, "upstream", "", pin=False)
            self._upstream = f"http://127.0.0.1:{port}"
        return self._upstream

    @property
    def redis_url(self) -> str:
        """A real ``redis-server`` on the load side (started on first use)."""
        if self._redis is None:
            from tests.support.redis import RedisServer

            server = RedisServer()
            server.start()
            self._redis = server
        return self._redis.url  # type: ignore[attr-defined, no-any-return]

    def close(self) -> None:
        self.processes.stop()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                self._redis.stop()  # type: ignore[attr-defined]
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class Target:
    """A server under test. Subclasses fill in ``start`` and what their rows need."""

    name: str
    """Key the rows refer to."""
    rows: tuple[Row, ...] = ()
    ours: bool = False
    """The gateway (or the gateway behind something): drawn in its own colour."""
    base_url: str = ""
    _pids: list[int] = field(default_factory=list)

    def start(self, env: Env) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        """Processes whose CPU counts for this target (their children are added)."""
        return list(self._pids)

    def page_url(self) -> str:
        """What ``page`` rows request (no session)."""
        return self.base_url + PAGE_PATH

    def auth_url(self) -> str:
        """What ``auth`` rows request with a session."""
        return self.base_url + PAGE_PATH

    def sessions(self, env: Env, count: int) -> list[str]:
        """``count`` authenticated sessions, each as the ``Cookie`` header value to send."""
        raise NotImplementedError(f"{self.name} has no sessions")

    def login_start_url(self) -> str:
        """The URL whose answer is a signed AuthnRequest redirect to the IdP."""
        raise NotImplementedError(f"{self.name} has no login")

    def logins(self, env: Env, count: int) -> list[OneShot]:
        """``count`` prepared login completions, each usable once."""
        raise NotImplementedError(f"{self.name} has no login")

    def loop_lag(self) -> dict[float, float] | None:
        """The server's event-loop lag histogram so far (upper bound -> cumulative count),
        if it has one (the gateway's ``gateway_event_loop_lag_seconds``)."""
        return None


TARGET_MODULES = (
    "bench.targets.nginx",
    "bench.targets.apache",
    "bench.targets.bare",
    "bench.targets.gateway",
    "bench.targets.forward_auth",
)
"""Modules whose ``targets()`` make up the comparison, in table order."""


def all_targets() -> list[Target]:
    found: list[Target] = []
    for name in TARGET_MODULES:
        found.extend(importlib.import_module(name).targets())
    return found
