"""The event-loop lag timer: a callback that holds the loop shows up as a late wake-up."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.loop_lag import measure_lag
from gateway.metrics import Metrics

pytestmark = pytest.mark.unit


async def test_a_blocking_callback_is_seen_as_lag_of_about_its_length() -> None:
    seen: list[float] = []
    task = asyncio.create_task(measure_lag(seen.append, interval=0.005))
    try:
        await asyncio.sleep(0.05)
        quiet = max(seen)
        time.sleep(0.08)  # noqa: ASYNC251 - a handler holding the loop for 80 ms, on purpose
        await asyncio.sleep(0.03)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert max(seen) >= 0.08 - 0.005
    assert quiet < 0.05  # an idle loop wakes up on time


def test_the_metric_counts_wake_ups_late_by_more_than_20_ms() -> None:
    metrics = Metrics()
    for lag in (0.0002, 0.003, 0.031, 0.4):
        metrics.loop_lag.observe(lag)
    sample = metrics.registry.get_sample_value
    name = "gateway_event_loop_lag_seconds_bucket"
    assert sample("gateway_event_loop_lag_seconds_count") == 4
    assert sample(name, {"le": "0.02"}) == 2
    assert sample(name, {"le": "0.05"}) == 3
