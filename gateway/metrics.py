"""Prometheus metrics for one gateway process (or all workers, in multiprocess mode).

Each application gets its own registry so tests and embedded apps do not share
counters. With several worker processes, ``PROMETHEUS_MULTIPROC_DIR`` is set
by the server before the workers start, and ``/_gateway/metrics`` aggregates
every worker's values, so a scrape that lands on any worker sees the total.
Every family here works in that mode: counters and histograms add up, and
each gauge says how workers combine (``multiprocess_mode``).

The per-request figures (request count, latency, upstream latency, in-flight)
are first added up in plain Python structures, which costs well under a
microsecond, and moved into the Prometheus metrics by ``flush()``: on every
scrape and, in the app, a few times a second (so other workers' scrapes see
them too). prometheus-client's own objects take a lock and walk the bucket
list on every call, which was measurable per request. Store operations and
registry lookups use the same deferral. Figures that other components count
anyway (tokens signed, token-cache hits) or that are states rather than
events (breaker, active sessions, expiry of certificates and keys) are read
from those components at flush time, so the request path does nothing extra.

The states read at flush time are gathered by ``gateway.metrics_states``; the
scrape endpoint (its own listener, its bearer token) is ``gateway.metrics_endpoint``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client import values as prom_values
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import RegistryUnavailable, StoreUnavailable

if TYPE_CHECKING:
    from gateway.store.base import Store

log = structlog.get_logger("gateway.metrics")

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Store round trips are sub-millisecond when healthy; the low buckets tell a slow Redis apart.
_STORE_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)

# How often the read-from-components figures are refreshed (they change slowly).
_STATE_INTERVAL = 5.0
# "Active": a token was issued for the session within this many seconds.
ACTIVE_SESSION_WINDOW = 300.0

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class MetricsSettings(BaseModel):
    """Where ``/_gateway/metrics`` is served and who may read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve the metrics on a separate listener on this port, and no longer "
        "on the main one (e.g. a port only Prometheus may reach). Default: the main listener.",
    )
    host: str | None = Field(
        None, description="Address of the separate metrics listener; default: server.host."
    )
    token_file: Path | None = Field(
        None,
        description="File holding a bearer token (16+ bytes) scrapers must send as "
        "'Authorization: Bearer <token>'; re-read when it changes. Default: no token.",
    )


def enable_multiprocess(directory: str) -> None:
    """Switch this process to multiprocess metric values stored in ``directory``.

    prometheus_client picks its value storage when it is imported; the
    supervisor calls this before forking workers so every worker writes its
    values to files that ``/_gateway/metrics`` then aggregates.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    prom_values.ValueClass = prom_values.get_value_class()  # type: ignore[no-untyped-call]


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (in-flight, states, expiry) from the aggregate."""
    prom_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class _Pending:
    """Observations not yet moved into a histogram."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: list[float] = []


def registry_error_reason(detail: str) -> str:
    """A bounded label for a registry failure (the detail text is free-form)."""
    if "circuit open" in detail:
        return "circuit_open"
    if detail.startswith("registry failed after"):
        return "unreachable"
    if detail.startswith("registry answer unusable"):
        return "unusable"
    if "never loaded" in detail:
        return "file_unloaded"
    if "setup failed" in detail:
        return "setup"
    return "other"


class Metrics:
    """The gateway's metric families."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        reg = self.registry
        # -- requests (hot path, deferred) --------------------------------------------
        self.requests = Counter(
            "gateway_requests",
            "Requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=reg,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request received to response finished, by route.",
            ["route"],
            buckets=_BUCKETS,
            registry=reg,
        )
        self.loop_lag = Histogram(
            "gateway_event_loop_lag_seconds",
            "How late a 10 ms timer on this worker's event loop woke up: a request that "
            "holds the loop delays every other request of the worker by as long.",
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=reg,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Time until the upstream's response headers arrived, by route.",
            ["route"],
            buckets=_BUCKETS,
            registry=reg,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Upstream failures by route and kind (connect, timeout, reset, invalid).",
            ["route", "kind"],
            registry=reg,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight",
            "Requests being handled now.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self._in_flight = 0
        self._counts: dict[tuple[str, str, int], int] = {}
        self._durations: dict[str, _Pending] = {}
        self._upstream: dict[str, _Pending] = {}
        self.config_reloads = Counter(
            "gateway_config_reloads",
            "Configuration reloads by result (applied, rejected).",
            ["result"],
            registry=reg,
        )
        # -- logins ---------------------------------------------------------------------
        self.logins = Counter(
            "gateway_logins",
            "Completed logins (assertion consumer) by outcome (succeeded, refused) and "
            "reason (the refusal's code; none when it succeeded).",
            ["outcome", "reason"],
            registry=reg,
        )
        self.logins.labels("succeeded", "none")
        # -- mandate registry -------------------------------------------------------------
        self.mandate_lookup_duration = Histogram(
            "gateway_mandate_lookup_duration_seconds",
            "Time of lookups at the mandate registry (cache misses), by source (http, file).",
            ["source"],
            buckets=_BUCKETS,
            registry=reg,
        )
        self.mandate_lookup_errors = Counter(
            "gateway_mandate_lookup_errors",
            "Failed lookups at the mandate registry, by source and reason (circuit_open, "
            "unreachable, unusable, file_unloaded, setup, other).",
            ["source", "reason"],
            registry=reg,
        )
        self.mandate_breaker = Gauge(
            "gateway_mandate_breaker_state",
            "The registry client's circuit breaker: 0 closed, 1 half-open, 2 open "
            "(the worst of all workers).",
            registry=reg,
            multiprocess_mode="livemax",
        )
        self._lookups: dict[str, _Pending] = {}
        # -- the store --------------------------------------------------------------------
        self.store_duration = Histogram(
            "gateway_store_operation_duration_seconds",
            "Time of store (Redis) operations, by operation.",
            ["operation"],
            buckets=_STORE_BUCKETS,
            registry=reg,
        )
        self.store_errors = Counter(
            "gateway_store_errors",
            "Store operations that failed (store unavailable), by operation.",
            ["operation"],
            registry=reg,
        )
        self._store_ops: dict[str, _Pending] = {}
        # -- identity tokens and sessions -------------------------------------------------
        self.tokens_signed = Counter(
            "gateway_tokens_signed", "Identity tokens signed (token-cache misses).", registry=reg
        )
        self.token_cache_hits = Counter(
            "gateway_token_cache_hits",
            "Identity tokens served from the token cache (no signature).",
            registry=reg,
        )
        self.tokens_large_set = Counter(
            "gateway_tokens_large_set",
            "Signed tokens that carry the large-set substitute instead of the employer list.",
            registry=reg,
        )
        self.sessions_active = Gauge(
            "gateway_sessions_active",
            "Sessions with an authenticated request in the last 5 minutes, as seen by each "
            "process (approximate: a session served by several workers or replicas counts "
            "in each).",
            registry=reg,
            multiprocess_mode="livesum",
        )
        # -- expiry -------------------------------------------------------------------------
        self.certificate_expiry = Gauge(
            "gateway_certificate_expiry_seconds",
            "Seconds until each certificate the gateway uses expires (notAfter), by use.",
            ["certificate"],
            registry=reg,
            multiprocess_mode="livemin",
        )
        # Labelled, so a figure that does not apply (metadata without validUntil, a key
        # without a signing-since stamp) is absent rather than a misleading 0.
        self.broker_metadata_expiry = Gauge(
            "gateway_broker_metadata_expiry_seconds",
            "Seconds until the validUntil of the broker metadata in use, by broker entityID.",
            ["entity_id"],
            registry=reg,
            multiprocess_mode="livemin",
        )
        self.token_key_expiry = Gauge(
            "gateway_token_key_expiry_seconds",
            "Seconds until the token signing key is due for rotation (signing since + "
            "tokens.key_lifetime_days), by kid.",
            ["kid"],
            registry=reg,
            multiprocess_mode="livemin",
        )
        self._watchers: list[Callable[[float], None]] = []
        self._states_at = 0.0
        # Client connections (gateway.connections): per connection, not per request.
        self.client_connections = Gauge(
            "gateway_client_connections",
            "Client connections open now.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self._client_connections = 0
        self.client_refused = Counter(
            "gateway_client_connections_refused",
            "Client connections answered 503 and closed at once, by reason "
            "(per_client, total: a cap; descriptors: none left to accept with).",
            ["reason"],
            registry=reg,
        )
        self.client_timeouts = Counter(
            "gateway_client_timeouts",
            "Client connections closed by a deadline, by kind (header: request head "
            "incomplete; body: request body stalled; keepalive: idle between requests).",
            ["kind"],
            registry=reg,
        )

    # -- the hot path: plain additions ------------------------------------------------

    def request_started(self) -> None:
        self._in_flight += 1

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request (runs on every request: keep it to additions)."""
        self._in_flight -= 1
        key = (route, method, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        self._observe(self._durations, route, seconds)

    def connection_opened(self) -> None:
        self._client_connections += 1

    def connection_closed(self) -> None:
        self._client_connections -= 1

    def observe_upstream(self, route: str, seconds: float) -> None:
        self._observe(self._upstream, route, seconds)

    @staticmethod
    def _observe(store: dict[str, _Pending], label: str, seconds: float) -> None:
        pending = store.get(label)
        if pending is None:
            pending = store[label] = _Pending()
        pending.values.append(seconds)

    # -- events off the hot path ---------------------------------------------------------

    def login(self, outcome: str, reason: str = "none") -> None:
        """One login came back from the broker: ``succeeded`` or ``refused`` (with the code)."""
        self.logins.labels(outcome, reason).inc()

    def store_operation(self, operation: str, seconds: float, failed: bool) -> None:
        self._observe(self._store_ops, operation, seconds)
        if failed:
            self.store_errors.labels(operation).inc()

    def registry_lookup(self, source: str, seconds: float, error: str | None) -> None:
        self._observe(self._lookups, source, seconds)
        if error is not None:
            self.mandate_lookup_errors.labels(source, error).inc()

    def watch(self, update: Callable[[float], None]) -> Callable[[], None]:
        """Call ``update(now)`` every few seconds at flush; returns a function that stops it."""
        self._watchers.append(update)
        self._states_at = 0.0  # first figures at the next flush

        def stop() -> None:
            with contextlib.suppress(ValueError):
                self._watchers.remove(update)

        return stop

    # -- moving the figures into Prometheus ----------------------------------------------

    def flush(self, *, states: bool = False) -> None:
        """Move what the hot path added up into the Prometheus metrics.

        Figures read from components are refreshed every few seconds, and always
        when ``states`` (a scrape).
        """
        counts, self._counts = self._counts, {}
        for (route, method, status), n in counts.items():
            self.requests.labels(route, method, str(status)).inc(n)
        for store, family in (
            (self._durations, self.duration),
            (self._upstream, self.upstream_duration),
            (self._store_ops, self.store_duration),
            (self._lookups, self.mandate_lookup_duration),
        ):
            for label, pending in store.items():
                if pending.values:
                    values, pending.values = pending.values, []
                    child = family.labels(label)
                    for value in values:
                        child.observe(value)
        self.in_flight.set(self._in_flight)
        now = time.time()
        if self._watchers and (states or now - self._states_at >= _STATE_INTERVAL):
            self._states_at = now
            for update in list(self._watchers):
                try:
                    update(now)
                except Exception:  # a broken figure must never break the scrape
                    log.exception("metrics_update_failed")
        self.client_connections.set(self._client_connections)

    def render(self) -> bytes:
        self.flush(states=True)
        if self.multiprocess:
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


# ---------------------------------------------------------------- instrumented parts


class TimedStore:
    """A ``Store`` that times each operation and counts failures; everything else passes on."""

    def __init__(self, inner: Store, metrics: Metrics) -> None:
        self.inner = inner
        self._metrics = metrics

    async def _timed(self, operation: str, call: Any) -> Any:
        started = time.perf_counter()
        try:
            result = await call
        except StoreUnavailable:
            self._metrics.store_operation(operation, time.perf_counter() - started, True)
            raise
        self._metrics.store_operation(operation, time.perf_counter() - started, False)
        return result

    async def get(self, key: str) -> bytes | None:
        result: bytes | None = await self._timed("get", self.inner.get(key))
        return result

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._timed("set", self.inner.set(key, value, ttl))

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        result: bool = await self._timed("add", self.inner.add(key, value, ttl))
        return result

    async def replace_if(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        result: bool = await self._timed(
            "replace_if", self.inner.replace_if(key, expected, value, ttl)
        )
        return result

    async def take(self, key: str) -> bytes | None:
        result: bytes | None = await self._timed("take", self.inner.take(key))
        return result

    async def delete(self, key: str) -> None:
        await self._timed("delete", self.inner.delete(key))

    async def ttl(self, key: str) -> float | None:
        result: float | None = await self._timed("ttl", self.inner.ttl(key))
        return result

    async def publish(self, channel: str, message: bytes) -> None:
        await self._timed("publish", self.inner.publish(channel, message))

    def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        return self.inner.subscribe(channel)

    async def ping(self) -> None:
        await self._timed("ping", self.inner.ping())

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TimedMandateSource:
    """A mandate source whose lookups are timed and whose failures are counted by reason."""

    def __init__(self, inner: Any, metrics: Metrics) -> None:
        self.inner = inner
        self._metrics = metrics
        self.kind = "http" if hasattr(inner, "breaker") else "file"

    async def mandates_for(self, administrator_kvk: str) -> Any:
        started = time.perf_counter()
        try:
            result = await self.inner.mandates_for(administrator_kvk)
        except RegistryUnavailable as exc:
            reason = registry_error_reason(exc.detail)
            self._metrics.registry_lookup(self.kind, time.perf_counter() - started, reason)
            raise
        except Exception:
            self._metrics.registry_lookup(self.kind, time.perf_counter() - started, "other")
            raise
        self._metrics.registry_lookup(self.kind, time.perf_counter() - started, None)
        return result

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


METRICS = web.AppKey("metrics", Metrics)
