"""Event-loop lag: how late a timer that should fire every 10 ms wakes up.

Everything a worker does runs on one event loop, so a callback that holds it
(CPU work that belongs in the verification pool, a blocking call) delays every
other request of that worker by as long. :func:`measure_lag` sleeps
``interval`` seconds in a loop and reports each wake-up's lateness to
``observe`` (the metric ``gateway_event_loop_lag_seconds``): a stall of S
seconds shows as one observation of at least S minus the interval. It costs
about a hundred short wake-ups a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

INTERVAL = 0.01
"""Seconds between two wake-ups of the lag timer."""


async def measure_lag(observe: Callable[[float], None], interval: float = INTERVAL) -> None:
    """Report the lateness of a wake-up every ``interval`` seconds, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        observe(max(0.0, loop.time() - due))
