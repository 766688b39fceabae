"""Prometheus metrics for one gateway process (or all workers, in multiprocess mode).

Each application gets its own registry so tests and embedded apps do not share
counters. With several worker processes, ``PROMETHEUS_MULTIPROC_DIR`` is set
by the server before the workers start, and ``/_gateway/metrics`` aggregates
every worker's values, so a scrape that lands on any worker sees the total.
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
            "Upstream failures by route and kind (connect, timeout, reset).",
            ["route", "kind"],
            registry=reg,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight",
            "Requests being handled now.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}
        self._upstream_children: dict[str, Histogram] = {}
        self.config_reloads = Counter(
            "gateway_config_reloads",
            "Configuration reloads by result (applied, rejected).",
            ["result"],
            registry=reg,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request; label children are cached (this runs per request)."""
        key = (route, method, status)
        child = self._request_children.get(key)
        if child is None:
            if len(self._request_children) > 10_000:
                self._request_children.clear()
            child = self._request_children[key] = self.requests.labels(route, method, str(status))
        child.inc()
        hist = self._duration_children.get(route)
        if hist is None:
            hist = self._duration_children[route] = self.duration.labels(route)
        hist.observe(seconds)

    def observe_upstream(self, route: str, seconds: float) -> None:
        hist = self._upstream_children.get(route)
        if hist is None:
            hist = self._upstream_children[route] = self.upstream_duration.labels(route)
        hist.observe(seconds)

    def render(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
