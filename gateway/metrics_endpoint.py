"""The scrape endpoint: ``/_gateway/metrics``, or a listener of its own, behind an optional token.

The endpoint can be served on its own listener (``metrics.port``) and can
require a bearer token (``metrics.token_file``, re-read when it changes); see
``docs/operations.md``. What it serves is ``gateway.metrics.Metrics.render``.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from gateway.metrics import Metrics

log = structlog.get_logger("gateway.metrics")

_BEARER = re.compile(r"Bearer +(\S+)\s*$", re.IGNORECASE)


class ScrapeGuard:
    """Checks the bearer token of a scrape against the token file (re-read when it changes)."""

    def __init__(self, token_file: Path | None) -> None:
        self.token_file = token_file
        self._stamp: tuple[int, int] | None = None
        self._token: bytes | None = None
        if token_file is not None:
            self._load()  # at startup: a missing or short file stops the gateway

    def _load(self) -> bytes:
        assert self.token_file is not None
        st = self.token_file.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp or self._token is None:
            token = self.token_file.read_bytes().strip()
            if len(token) < 16:
                raise ValueError(f"{self.token_file}: the metrics token must be at least 16 bytes")
            self._token, self._stamp = token, stamp
        return self._token

    def allows(self, authorization: str | None) -> bool:
        """Whether a scrape with this ``Authorization`` header may read the metrics."""
        if self.token_file is None:
            return True
        expected = self._load()
        m = _BEARER.match(authorization or "")
        return m is not None and hmac.compare_digest(m.group(1).encode(), expected)


def metrics_handler(metrics: Metrics, guard: ScrapeGuard) -> Callable[[web.Request], Any]:
    """The aiohttp handler serving the Prometheus text, behind the token check if any."""

    async def handler(request: web.Request) -> web.Response:
        try:
            allowed = guard.allows(request.headers.get("Authorization"))
        except (OSError, ValueError) as exc:
            log.error("metrics_token_unreadable", file=str(guard.token_file), error=str(exc))
            return web.Response(
                status=503,
                text="metrics token unavailable / metrics-token niet beschikbaar\n",
                headers={"Cache-Control": "no-store"},
            )
        if not allowed:
            log.warning("metrics_access_denied", client=request.remote)
            return web.Response(
                status=401,
                text="bearer token required / bearer-token vereist\n",
                headers={
                    "WWW-Authenticate": 'Bearer realm="gateway-metrics"',
                    "Cache-Control": "no-store",
                },
            )
        return web.Response(
            body=metrics.render(),
            headers={"Content-Type": metrics.content_type, "Cache-Control": "no-store"},
        )

    return handler


def metrics_app(metrics: Metrics, guard: ScrapeGuard, path: str) -> web.Application:
    """The application of the separate metrics listener: ``path`` and ``/metrics`` only."""
    app = web.Application()
    handler = metrics_handler(metrics, guard)
    app.router.add_get(path, handler)
    if path != "/metrics":
        app.router.add_get("/metrics", handler)
    return app


METRICS_LISTENER = web.AppKey("metrics_listener", list)


async def metrics_listener_ctx(
    app: web.Application,
    *,
    metrics: Metrics,
    guard: ScrapeGuard,
    path: str,
    host: str,
    port: int,
    reuse_port: bool,
) -> AsyncIterator[None]:
    """Run the separate metrics listener for as long as ``app`` runs (cleanup context)."""
    runner = web.AppRunner(metrics_app(metrics, guard, path), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port)
    await site.start()
    bound = [a for a in runner.addresses if isinstance(a, tuple)]
    actual = int(bound[0][1]) if bound else port
    app[METRICS_LISTENER] = [host, actual]
    log.info("metrics_listener_started", host=host, port=actual)
    try:
        yield
    finally:
        await runner.cleanup()


def metrics_listener_address(app: web.Application) -> tuple[str, int]:
    """(host, port) of the separate metrics listener of a started ``app``."""
    host, port = app[METRICS_LISTENER]
    return str(host), int(port)
