"""The dependency monitor: statuses, gauge, freshness; readiness independent of dependencies."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from gateway.errors import StoreUnavailable
from gateway.health import DependencyMonitor, DependencyStatus
from tests.support.clock import FakeClock


async def test_each_failure_kind_is_down_with_a_reason_and_the_gauge_follows() -> None:
    """A passing check is up (1); a hanging or failing one is down (0) with what went wrong."""

    async def fine() -> DependencyStatus:
        return DependencyStatus("fine", True, "answers")

    async def hangs() -> DependencyStatus:
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    async def refused() -> DependencyStatus:
        raise StoreUnavailable("redis: ping failed: ConnectionError")

    async def broken() -> DependencyStatus:
        raise KeyError("surprise")

    registry = CollectorRegistry()
    monitor = DependencyMonitor(
        [("fine", fine), ("hangs", hangs), ("refused", refused), ("broken", broken)],
        registry,
        timeout=0.05,
    )
    report = await monitor.report()
    assert not report.all_up
    by_name = {s.name: s for s in report.statuses}
    assert by_name["fine"].up and by_name["fine"].detail == "answers"
    assert not by_name["hangs"].up and by_name["hangs"].detail == "no answer within 0.05 s"
    assert not by_name["refused"].up and by_name["refused"].detail == "store_unavailable"
    assert not by_name["broken"].up and by_name["broken"].detail == "check failed: KeyError"
    gauge = {
        name: registry.get_sample_value("gateway_dependency_up", {"dependency": name})
        for name in by_name
    }
    assert gauge == {"fine": 1.0, "hangs": 0.0, "refused": 0.0, "broken": 0.0}
    body = report.as_json(report.checked_at)
    assert body["status"] == "degraded"
    assert body["dependencies"]["fine"] == {"up": True, "detail": "answers"}  # type: ignore[index]


async def test_reports_are_reused_while_fresh_and_concurrent_callers_share_one_run() -> None:
    """Calls within ``fresh_for`` reuse the last report; callers during a run wait for it."""
    clock = FakeClock(100.0)
    calls = 0
    gate = asyncio.Event()

    async def counted() -> DependencyStatus:
        nonlocal calls
        calls += 1
        await gate.wait()
        return DependencyStatus("store", True, "answers")

    monitor = DependencyMonitor(
        [("store", counted)], CollectorRegistry(), fresh_for=1.0, clock=clock.time
    )
    waiting = [asyncio.create_task(monitor.report()) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    reports = await asyncio.gather(*waiting)
    assert calls == 1 and all(r is reports[0] for r in reports)
    clock.advance(0.5)
    assert await monitor.report() is reports[0] and calls == 1
    clock.advance(0.6)
    assert (await monitor.report()).checked_at == 101.1 and calls == 2
