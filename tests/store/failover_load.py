"""Login-like traffic against a store while its Redis fails over, and the loss check after.

Used by the failover tests and by ``bench failover``. Workers go through the
session manager, the same public protocol the gateway's login and request paths
use: each loop creates a session (a login: ``SET`` of the record and of its
ref) and reads back one earlier acknowledged session through a second manager
that does not cache (a request: ``GET``). A session counts as acknowledged
when ``create`` returned it, the moment the gateway would set the cookie.

The summary says what a user would have seen: creations and reads that failed
(``StoreUnavailable``, a 503 page), reads that found an acknowledged session
missing, and how long after the trigger the failures lasted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.errors import StoreUnavailable
from gateway.sessions.manager import SessionManager
from gateway.sessions.record import Session
from gateway.sessions.settings import SessionSettings
from gateway.store.base import Store
from gateway.store.factory import StoreSettings, create_store
from tests.sessions.conftest import make_employers, make_identity

REF_SECRET = b"f" * 32


@dataclass
class LoadReport:
    """What happened to the traffic; times are seconds since the trigger."""

    acknowledged: list[Session] = field(default_factory=list)
    created_ok: int = 0
    create_failed: int = 0
    read_ok: int = 0
    read_failed: int = 0
    read_missing: int = 0
    failure_times: list[float] = field(default_factory=list)
    create_latencies: list[float] = field(default_factory=list)
    trigger_at: float | None = None
    settled_at: float | None = None
    created_at: list[float] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    before: float = 1.0

    def since_trigger(self, now: float) -> float:
        return now - self.trigger_at if self.trigger_at is not None else -1.0

    def stall(self) -> tuple[float, float]:
        """(longest time after the trigger without a completed login, when it began)."""
        if self.trigger_at is None:
            return 0.0, 0.0
        points = sorted([0.0, *(t for t in self.created_at if t >= 0)])
        gaps = [(b - a, a) for a, b in itertools.pairwise(points)]
        return max(gaps, default=(0.0, 0.0))

    def summary(self, label: str) -> str:
        failures = [t for t in self.failure_times if t >= 0]
        window = f"+{failures[0]:.2f}..+{failures[-1]:.2f} s" if failures else "none"
        lat = sorted(self.create_latencies)
        p99 = lat[int(len(lat) * 0.99)] * 1000 if lat else 0.0
        worst = lat[-1] * 1000 if lat else 0.0
        settled = 0.0
        if self.trigger_at is not None and self.settled_at is not None:
            settled = self.settled_at - self.trigger_at
        before = sum(1 for t in self.created_at if t < 0)
        during = sum(1 for t in self.created_at if 0 <= t < settled)
        gap, gap_at = self.stall()
        return (
            f"{label}: lost {len(self.lost)} of {len(self.acknowledged)} acknowledged "
            f"sessions | failed: creates {self.create_failed}, reads {self.read_failed} "
            f"(reads finding nothing: {self.read_missing}) | failures after the trigger: "
            f"{window} | longest time without a completed login: {gap:.2f} s "
            f"(from +{gap_at:.2f} s) | create latency p99 {p99:.0f} ms, max {worst:.0f} ms | "
            f"logins/s before {before / self.before:.0f}, in the {settled:.1f} s "
            f"until settled {during / max(settled, 1e-9):.0f}"
        )


async def _worker(
    writer: SessionManager,
    reader: SessionManager,
    report: LoadReport,
    stop: asyncio.Event,
    pause: float,
) -> None:
    rng = random.Random()
    while not stop.is_set():
        started = time.monotonic()
        try:
            session = await writer.create(make_identity(), make_employers(3))
        except StoreUnavailable:
            report.create_failed += 1
            report.failure_times.append(report.since_trigger(time.monotonic()))
        else:
            report.create_latencies.append(time.monotonic() - started)
            report.created_at.append(report.since_trigger(time.monotonic()))
            report.created_ok += 1
            report.acknowledged.append(session)
        if report.acknowledged:
            probe = rng.choice(report.acknowledged)
            try:
                loaded = await reader.load(probe.id)
            except StoreUnavailable:
                report.read_failed += 1
                report.failure_times.append(report.since_trigger(time.monotonic()))
            else:
                if loaded is None:
                    report.read_missing += 1
                else:
                    report.read_ok += 1
        await asyncio.sleep(pause)


async def run_load(
    store: Store,
    trigger: Callable[[], Awaitable[None]],
    *,
    workers: int = 4,
    pause: float = 0.02,
    before: float = 1.0,
    after: float = 2.0,
) -> LoadReport:
    """Run traffic for ``before`` s, await ``trigger()`` (the failover, until it has
    settled), run ``after`` s more, stop. Failures before the trigger count too."""
    report = LoadReport(before=before)
    writer = SessionManager(store, SessionSettings(), ref_secret=REF_SECRET)
    reader = SessionManager(store, SessionSettings(cache_seconds=0), ref_secret=REF_SECRET)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(_worker(writer, reader, report, stop, pause)) for _ in range(workers)
    ]
    try:
        await asyncio.sleep(before)
        report.trigger_at = time.monotonic()
        await trigger()
        report.settled_at = time.monotonic()
        await asyncio.sleep(after)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await writer.aclose()
        await reader.aclose()
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return report


async def find_lost(url: str, report: LoadReport) -> list[str]:
    """Read every acknowledged session through a fresh store; the IDs that are gone or differ."""
    store = create_store(StoreSettings(url=url), environ={})
    manager = SessionManager(store, SessionSettings(cache_seconds=0), ref_secret=REF_SECRET)
    lost: list[str] = []
    try:
        for session in report.acknowledged:
            for attempt in range(20):
                try:
                    loaded = await manager.load(session.id)
                    break
                except StoreUnavailable:
                    if attempt == 19:
                        raise
                    await asyncio.sleep(0.25)
            # A read may have touched the record (``last_seen``): compare what a
            # login wrote and nothing later changes.
            if loaded is None or (loaded.csrf_secret, loaded.allowed) != (
                session.csrf_secret,
                session.allowed,
            ):
                lost.append(session.id)
    finally:
        with contextlib.suppress(Exception):
            await manager.aclose()
        await store.close()
    report.lost = lost
    return lost
