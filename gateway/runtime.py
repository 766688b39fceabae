"""The configuration in force and its reload: one generation at a time, replaced whole.

A ``Generation`` is one loaded configuration and what is compiled from it (the
router, the header deny-list). A request takes the generation current when it
arrives and keeps it to the end, so a reload (SIGHUP, or the file changing on
disk when ``server.config_poll_seconds`` is set) never changes a request
half-way. A configuration that does not load is rejected and the old one kept;
sections that only apply at startup (store, sessions, saml, mandates, tokens,
admin, server) are logged as such.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from aiohttp import web

from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigInvalid
from gateway.metrics import Metrics
from gateway.routing import Router

log = structlog.get_logger("gateway.runtime")

_RESTART_SECTIONS = ("store", "sessions", "saml", "mandates", "tokens", "admin")


@dataclass(frozen=True)
class Generation:
    """One loaded configuration and what is compiled from it; replaced whole on reload."""

    config: GatewayConfig
    router: Router
    deny_headers: frozenset[str]
    number: int
    public_url: str | None = None
    """``server.public_url`` without its trailing slash, as the proxy path uses it."""


def compile_generation(config: GatewayConfig, number: int) -> Generation:
    # Identity headers are always denied, whatever the deny-list says: nothing
    # behind the gateway may ever see a client-made identity.
    deny = {h.lower() for h in config.server.deny_headers} | config.identity_headers()
    public = config.server.public_url
    public_url = str(public).rstrip("/") if public else None
    return Generation(config, Router(config.routes), frozenset(deny), number, public_url)


@dataclass
class Runtime:
    """Mutable process state: the current configuration generation and lifecycle flags."""

    path: Path | None
    current: Generation
    environ: dict[str, str] | None = None
    draining: bool = False
    _stamp: tuple[int, int, int] | None = None
    # Called after every reload attempt (SIGHUP or file change): e.g. token keys.
    on_reload: list[Callable[[], None]] = field(default_factory=list)

    def reload(self, metrics: Metrics) -> bool:
        """Load the file again; switch to it only if valid. In-flight requests keep theirs."""
        for hook in self.on_reload:
            hook()
        if self.path is None:
            return False
        try:
            config = load_config(self.path, self.environ)
        except ConfigInvalid as exc:
            metrics.config_reloads.labels("rejected").inc()
            log.error(
                "config_reload_rejected",
                file=str(self.path),
                problems=[str(p) for p in exc.problems],
                kept_generation=self.current.number,
            )
            return False
        old = self.current.config
        if any(getattr(config, s) != getattr(old, s) for s in _RESTART_SECTIONS):
            log.warning(
                "config_login_sections_changed",
                detail="store, sessions, saml, mandates, tokens and admin apply after a restart",
            )
        if config.server != old.server:
            log.warning(
                "config_server_section_changed",
                detail="listen address, workers and prefix apply after a restart",
            )
        self.current = compile_generation(config, self.current.number + 1)
        self._stamp = _file_stamp(self.path)
        metrics.config_reloads.labels("applied").inc()
        log.info("config_reloaded", file=str(self.path), generation=self.current.number)
        return True

    def changed_on_disk(self) -> bool:
        if self.path is None:
            return False
        stamp = _file_stamp(self.path)
        if self._stamp is None:
            self._stamp = stamp
            return False
        if stamp != self._stamp:
            self._stamp = stamp
            return True
        return False


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


async def watch(runtime: Runtime, metrics: Metrics, interval: float) -> None:
    """Reload whenever the file changes on disk, checking every ``interval`` seconds."""
    while True:
        await asyncio.sleep(interval)
        if runtime.changed_on_disk():
            runtime.reload(metrics)


RUNTIME = web.AppKey("runtime", Runtime)
