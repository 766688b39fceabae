"""Health of what this replica depends on, kept apart from its readiness.

Readiness (``/_gateway/readyz``) says only what this replica decides on its
own: its configuration is loaded, it listens (it answers at all), and it is
not draining. Nothing shared goes into it: when Redis, the broker or the
registry is down, it is down for *every* replica at once, and a readiness
probe that followed it would take every replica out of the load balancer
together, turning a login outage into a total one (public pages and the JWKS
included) and leaving nothing to fail over to.

The shared dependencies are reported here instead, by
``/_gateway/dependencies`` (200 when all are up, 503 with the details when
one is not; for monitoring and alerting, never as a probe) and by the gauge
``gateway_dependency_up{dependency}`` (1 up, 0 down), refreshed every
``CHECK_INTERVAL`` seconds in the background:

==============  ===========================================================
dependency      up when
==============  ===========================================================
``store``       the store answers a ``PING`` within ``CHECK_TIMEOUT``
``broker``      the broker's SAML metadata has been loaded at least once
``registry``    HTTP registry: its circuit breaker is closed;
                file registry: the file is there
``upstreams``   every upstream host name resolves (cached for 10 s)
==============  ===========================================================

``store``, ``broker`` and ``registry`` exist only when login is configured.
The checks are passive where they can be (the breaker and the metadata record
what real traffic saw) so monitoring adds no load to a struggling dependency;
the store ping is one round trip per ``CHECK_INTERVAL`` per process, and an
endpoint call within ``FRESH_FOR`` seconds of the last check reuses its result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from gateway.config import GatewayConfig
from gateway.context import Route
from gateway.errors import GatewayError
from gateway.mandates.file_source import FileMandateSource
from gateway.mandates.http_source import HttpMandateSource
from gateway.runtime import RUNTIME
from gateway.services import SERVICES

CHECK_INTERVAL = 5.0
CHECK_TIMEOUT = 2.0
FRESH_FOR = 1.0


@dataclass(frozen=True)
class DependencyStatus:
    """One dependency as seen by one check."""

    name: str
    up: bool
    detail: str


Check = Callable[[], Awaitable[DependencyStatus]]


@dataclass(frozen=True)
class DependencyReport:
    """Every dependency at one moment (``checked_at``: monotonic seconds)."""

    statuses: tuple[DependencyStatus, ...]
    checked_at: float

    @property
    def all_up(self) -> bool:
        return all(s.up for s in self.statuses)

    def as_json(self, now: float) -> dict[str, object]:
        return {
            "status": "ok" if self.all_up else "degraded",
            "checked_seconds_ago": round(max(0.0, now - self.checked_at), 3),
            "dependencies": {s.name: {"up": s.up, "detail": s.detail} for s in self.statuses},
        }


class DependencyMonitor:
    """Runs the checks, keeps the last report, and mirrors it into the gauge."""

    def __init__(
        self,
        checks: Sequence[tuple[str, Check]],
        registry: CollectorRegistry,
        *,
        timeout: float = CHECK_TIMEOUT,
        fresh_for: float = FRESH_FOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checks = list(checks)
        self._timeout = timeout
        self._fresh_for = fresh_for
        self._clock = clock
        self._last: DependencyReport | None = None
        self._running: asyncio.Task[DependencyReport] | None = None
        self.gauge = Gauge(
            "gateway_dependency_up",
            "Whether a shared dependency is usable from this process (1) or not (0).",
            ["dependency"],
            registry=registry,
            # With several workers: down if any live worker sees it down.
            multiprocess_mode="livemin",
        )

    def extend(self, checks: Sequence[tuple[str, Check]]) -> None:
        self._checks.extend(checks)

    async def report(self) -> DependencyReport:
        """The last report if fresh enough, else a new one."""
        last = self._last
        if last is not None and self._clock() - last.checked_at < self._fresh_for:
            return last
        return await self.refresh()

    async def refresh(self) -> DependencyReport:
        """Check now; callers that arrive while a run is going share it."""
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._run_checks())
        # shield: a caller that goes away must not cancel the run others wait for.
        return await asyncio.shield(self._running)

    async def _run_checks(self) -> DependencyReport:
        statuses = await asyncio.gather(*(self._one(name, check) for name, check in self._checks))
        report = DependencyReport(tuple(statuses), self._clock())
        for status in statuses:
            self.gauge.labels(status.name).set(1 if status.up else 0)
        self._last = report
        return report

    async def _one(self, name: str, check: Check) -> DependencyStatus:
        try:
            async with asyncio.timeout(self._timeout):
                return await check()
        except TimeoutError:
            return DependencyStatus(name, False, f"no answer within {self._timeout:g} s")
        except GatewayError as err:
            return DependencyStatus(name, False, err.code)
        except Exception as exc:  # a check must never take the endpoint down with it
            return DependencyStatus(name, False, f"check failed: {type(exc).__name__}")

    async def run(self, interval: float = CHECK_INTERVAL) -> None:
        """Keep the gauge current: check every ``interval`` seconds until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(interval)


def upstream_dns_check(config: Callable[[], GatewayConfig]) -> Check:
    """Every upstream host name of the current routes resolves (answers cached for 10 s)."""
    cache: dict[str, float] = {}

    async def check() -> DependencyStatus:
        loop = asyncio.get_running_loop()
        hosts = {str(r.upstream.host) for r in config().routes if r.upstream.host}
        now = time.monotonic()
        failed = []
        for host in sorted(hosts):
            if cache.get(host, 0) > now:
                continue
            try:
                await asyncio.wait_for(loop.getaddrinfo(host, None), timeout=CHECK_TIMEOUT)
                cache[host] = now + 10
            except (OSError, TimeoutError):
                failed.append(host)
        if failed:
            return DependencyStatus("upstreams", False, "cannot resolve: " + ", ".join(failed))
        return DependencyStatus("upstreams", True, f"{len(hosts)} resolvable")

    return check


def login_checks(app: web.Application) -> list[tuple[str, Check]]:
    """The store, broker and registry checks of the login services in ``app``."""

    async def store() -> DependencyStatus:
        services = app.get(SERVICES)
        if services is None:
            return DependencyStatus("store", False, "starting")
        await services.store.ping()
        return DependencyStatus("store", True, "answers")

    async def broker() -> DependencyStatus:
        services = app.get(SERVICES)
        if services is None:
            return DependencyStatus("broker", False, "starting")
        if not services.sp.broker.loaded:
            return DependencyStatus("broker", False, "broker metadata never loaded")
        return DependencyStatus("broker", True, "broker metadata loaded")

    async def registry() -> DependencyStatus:
        services = app.get(SERVICES)
        if services is None:
            return DependencyStatus("registry", False, "starting")
        source = services.mandates.source
        if isinstance(source, HttpMandateSource):
            state = source.breaker.state
            failures = source.breaker.consecutive_failures
            return DependencyStatus(
                "registry", state == "closed", f"circuit {state}, {failures} failure(s) in a row"
            )
        if isinstance(source, FileMandateSource):
            present = await asyncio.to_thread(source.path.is_file)
            return DependencyStatus(
                "registry", present, "file present" if present else "file missing"
            )
        return DependencyStatus("registry", True, type(source).__name__)

    return [("store", store), ("broker", broker), ("registry", registry)]


DEPENDENCIES = web.AppKey("dependencies", DependencyMonitor)


async def healthz(request: web.Request) -> web.Response:
    """Process alive: answers as long as the event loop runs."""
    return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def readyz(request: web.Request) -> web.Response:
    """This replica can serve: config loaded, listening (it answers), not draining.

    Shared dependencies (store, broker, registry, upstream DNS) are deliberately
    not part of it: they fail for every replica at once, and a load balancer
    would then drop them all together (module docstring).
    """
    runtime = request.app[RUNTIME]
    checks: dict[str, dict[str, object]] = {
        "config": {"ok": True, "detail": f"generation {runtime.current.number}"},
        "draining": {
            "ok": not runtime.draining,
            "detail": "shutting down" if runtime.draining else "serving",
        },
    }
    ok = not runtime.draining
    return web.json_response(
        {"status": "ready" if ok else "not_ready", "checks": checks},
        status=200 if ok else 503,
        headers={"Cache-Control": "no-store"},
    )


async def dependencies(request: web.Request) -> web.Response:
    """Shared dependencies: 200 when all are up, else 503 with details (monitoring only)."""
    report = await request.app[DEPENDENCIES].report()
    return web.json_response(
        report.as_json(time.monotonic()),
        status=200 if report.all_up else 503,
        headers={"Cache-Control": "no-store"},
    )


def health_routes(prefix: str) -> list[Route]:
    """(method, path, handler) of the probes and the dependency report."""
    return [
        ("GET", prefix + "healthz", healthz),
        ("GET", prefix + "readyz", readyz),
        ("GET", prefix + "dependencies", dependencies),
    ]
