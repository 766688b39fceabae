"""One fake clock for every test that injects a clock: time passes only when the test says so.

The code takes its clock in one of two shapes: seconds (``time.time`` or
``time.monotonic`` style, a float) or an aware UTC ``datetime``. Both readings
come from the same instant here, so a test moves one clock and every part of
the system sees the same time:

    clock = FakeClock()
    store = MemoryStore(clock=clock.time)          # seconds
    rule = Freshness(..., clock=clock.now)         # datetime
    clock.advance(seconds=61)

The ``clock`` fixture (``tests/conftest.py``) gives a fresh one per test.
"""

from __future__ import annotations

import datetime as dt

# A fixed, ordinary moment: tests that print times read the same on every run.
START = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _micros(when: dt.datetime | float) -> int:
    if isinstance(when, dt.datetime):
        return (when - _EPOCH) // dt.timedelta(microseconds=1)
    return round(when * 1_000_000)


class FakeClock:
    """A clock tests move by hand; ``time()`` in seconds, ``now()`` as a UTC datetime.

    Kept in whole microseconds, so both readings are exact and agree.
    """

    def __init__(self, start: dt.datetime | float = START) -> None:
        self._micros = _micros(start)

    def time(self) -> float:
        """The current moment in seconds (since the epoch, or any origin the test chose)."""
        return self._micros / 1_000_000

    def now(self) -> dt.datetime:
        """The current moment as an aware UTC datetime."""
        return _EPOCH + dt.timedelta(microseconds=self._micros)

    def advance(self, seconds: float = 0.0, **delta: float) -> None:
        """Move forward by ``seconds`` plus any ``timedelta`` keywords (``minutes=2``)."""
        step = dt.timedelta(seconds=seconds, **delta)
        self._micros += step // dt.timedelta(microseconds=1)

    def set(self, when: dt.datetime | float) -> None:
        """Jump to ``when`` (a datetime, or seconds)."""
        self._micros = _micros(when)
