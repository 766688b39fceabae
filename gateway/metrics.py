"""Prometheus metrics for one gateway process (or all workers, in multiprocess mode).

Each application gets its own registry so tests and embedded apps do not share
counters. With several worker processes, ``PROMETHEUS_MULTIPROC_DIR`` is set
by the server before the workers start, and ``/_gateway/metrics`` aggregates
every worker's values, so a scrape that lands on any worker sees the total.

The per-request figures (request count, latency, upstream latency, in-flight)
are first added up in plain Python structures, which costs well under a
microsecond, and moved into the Prometheus metrics by ``flush()``: on every
scrape and, in the app, a few times a second (so other workers' scrapes see
them too). prometheus-client's own objects take a lock and walk the bucket
list on every call, which was measurable per request.
"""

from __future__ import annotations

import os

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

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def enable_multiprocess(directory: str) -> None:
    """Switch this process to multiprocess metric values stored in ``directory``.

    prometheus_client picks its value storage when it is imported; the
    supervisor calls this before forking workers so every worker writes its
    values to files that ``/_gateway/metrics`` then aggregates.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    prom_values.ValueClass = prom_values.get_value_class()  # type: ignore[no-untyped-call]


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (in-flight) from the aggregate."""
    prom_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class _Pending:
    """Observations not yet moved into a histogram."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: list[float] = []


class Metrics:
    """The gateway's metric families."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        reg = self.registry
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
    def _observe(store: dict[str, _Pending], route: str, seconds: float) -> None:
        pending = store.get(route)
        if pending is None:
            pending = store[route] = _Pending()
        pending.values.append(seconds)

    # -- moving the figures into Prometheus ----------------------------------------------

    def flush(self) -> None:
        """Move what the hot path added up into the Prometheus metrics."""
        counts, self._counts = self._counts, {}
        for (route, method, status), n in counts.items():
            self.requests.labels(route, method, str(status)).inc(n)
        for store, family in (
            (self._durations, self.duration),
            (self._upstream, self.upstream_duration),
        ):
            for route, pending in store.items():
                if pending.values:
                    values, pending.values = pending.values, []
                    child = family.labels(route)
                    for value in values:
                        child.observe(value)
        self.in_flight.set(self._in_flight)
        self.client_connections.set(self._client_connections)

    def render(self) -> bytes:
        self.flush()
        if self.multiprocess:
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
