"""Wiring: builds the aiohttp application from a configuration. No decisions live here.

The request path: the edge (``gateway.edge``: request id, error pages, access
line, metrics) → the gateway's own endpoints under the reserved prefix, or,
for everything else, the plan (``gateway.plan``: target, route, policy) and
the forwarder (``gateway.proxy``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

from aiohttp import web

from gateway.backend_api import backend_routes
from gateway.config import GatewayConfig
from gateway.context import Route
from gateway.edge import ACCESS_LOG, EveryTarget, edge, edged, flush_access_log
from gateway.forward_auth import forward_auth_routes
from gateway.health import (
    DEPENDENCIES,
    DependencyMonitor,
    health_routes,
    login_checks,
    upstream_dns_check,
)
from gateway.login import login_routes
from gateway.logs import access_logger, configure_logging
from gateway.loop_lag import measure_lag
from gateway.metrics import METRICS, Metrics
from gateway.metrics_endpoint import ScrapeGuard, metrics_handler, metrics_listener_ctx
from gateway.overview import overview_routes
from gateway.proxy import FORWARDER, Forwarder
from gateway.runtime import RUNTIME, Runtime, compile_generation, watch
from gateway.services import services_ctx


def build_app(
    config: GatewayConfig,
    *,
    config_path: Path | None = None,
    environ: dict[str, str] | None = None,
    configure_logs: bool = True,
    clock: Callable[[], dt.datetime] | None = None,
) -> web.Application:
    """The gateway application for ``config``; ``config_path`` enables reload.

    ``clock``: the login services' time (``gateway.services``); the system clock by default.
    """
    if configure_logs:
        configure_logging(config.logging.format, config.logging.level)
    app = web.Application(client_max_size=1024**2)
    runtime = Runtime(config_path, compile_generation(config, 1), environ)
    if config_path is not None:
        runtime.changed_on_disk()  # remember the stamp of the file we loaded
    metrics = Metrics()
    monitor = DependencyMonitor(
        [("upstreams", upstream_dns_check(lambda: runtime.current.config))], metrics.registry
    )
    forwarder = Forwarder(config.server, metrics)
    app[RUNTIME] = runtime
    app[METRICS] = metrics
    app[FORWARDER] = forwarder
    app[DEPENDENCIES] = monitor
    app[ACCESS_LOG] = access_logger(config.logging.level)
    app.cleanup_ctx.append(partial(_forwarder_ctx, forwarder=forwarder))
    app.cleanup_ctx.append(partial(_background_ctx, runtime=runtime, metrics=metrics))

    prefix = config.server.reserved_prefix
    endpoints: list[Route] = []
    if config.login_enabled:
        assert config.tokens is not None
        app.cleanup_ctx.append(
            partial(
                services_ctx,
                config=config,
                metrics=metrics,
                on_reload=runtime.on_reload,
                clock=clock,
            )
        )
        monitor.extend(login_checks(app))
        endpoints += login_routes(prefix)
        endpoints += overview_routes(prefix)
        endpoints += backend_routes(prefix, config.tokens.employers_path)
    if config.forward_auth.enabled:
        current = lambda: (runtime.current.config, runtime.current.router)  # noqa: E731
        endpoints += forward_auth_routes(prefix, current)
    endpoints += health_routes(prefix)
    scrape = ScrapeGuard(config.metrics.token_file)  # a bad token file stops startup here
    if config.metrics.port is None:
        endpoints.append(("GET", prefix + "metrics", metrics_handler(metrics, scrape)))
    else:  # its own listener (e.g. reachable by Prometheus only); not on the main one
        app.cleanup_ctx.append(
            partial(
                metrics_listener_ctx,
                metrics=metrics,
                guard=scrape,
                path=prefix + "metrics",
                host=config.metrics.host or config.server.host,
                port=config.metrics.port,
                reuse_port=config.server.workers > 1,
            )
        )
    for method, path, handler in endpoints:
        if method == "GET":
            app.router.add_get(path, edged(handler))  # HEAD too
        else:
            app.router.add_route(method, path, edged(handler))
    app.router.add_route("*", "/{tail:.*}", edge)
    # Appended last: the login services exist before the first dependency check.
    app.cleanup_ctx.append(partial(_monitor_ctx, monitor=monitor))
    every_target = EveryTarget()
    every_target.add_route("*", edge)
    app.router.register_resource(every_target)
    return app


async def _forwarder_ctx(app: web.Application, forwarder: Forwarder) -> AsyncIterator[None]:
    await forwarder.start()
    yield
    await forwarder.close()


async def _background_ctx(
    app: web.Application, runtime: Runtime, metrics: Metrics
) -> AsyncIterator[None]:
    """The access-log flusher, the event-loop lag timer, and the config file watcher when
    reload by polling is on."""
    interval = runtime.current.config.server.config_poll_seconds
    tasks = [
        asyncio.create_task(flush_access_log(app)),
        asyncio.create_task(measure_lag(metrics.loop_lag.observe), name="loop-lag"),
    ]
    if runtime.path is not None and interval > 0:
        tasks.append(asyncio.create_task(watch(runtime, metrics, interval)))
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    app[ACCESS_LOG].sink.flush()


async def _monitor_ctx(app: web.Application, monitor: DependencyMonitor) -> AsyncIterator[None]:
    task = asyncio.create_task(monitor.run(), name="dependency-checks")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
