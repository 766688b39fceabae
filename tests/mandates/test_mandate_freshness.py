"""The mandate freshness rule (``gateway.mandates.freshness``), row by row on a fake clock.

R = 60 s (re-check interval), S = 900 s (staleness limit). Times are seconds
after T0; every row states the situation and what the rule must answer,
microsecond-exact around each limit.
"""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.mandates.freshness import Freshness, MandateCheck
from tests.support.clock import FakeClock

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
R, S = 60.0, 900.0
US = 1e-6  # one microsecond, the datetime resolution


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


RULE = Freshness(dt.timedelta(seconds=R), dt.timedelta(seconds=S))


# (asked for at, used at, latest push or None) -> may the answer be used?
FRESH_ROWS = [
    (0, 0, None, True),
    (0, R - US, None, True),
    (0, R, None, False),  # R old: never used, by a login or a session
    (0, R + 1, None, False),
    (30, 60, 30, True),  # asked for at the moment of the push: after it
    (30, 60, 30 + US, False),  # asked for before the push: void
    (30, 31, 10, True),  # an old push changes nothing for a later answer
]


@pytest.mark.parametrize(("asked", "used", "pushed", "fresh"), FRESH_ROWS)
def test_how_old_an_answer_may_be(
    asked: float, used: float, pushed: float | None, fresh: bool
) -> None:
    """An answer is used only while younger than R and not asked for before the latest push."""
    not_before = at(pushed) if pushed is not None else None
    assert RULE.is_fresh(at(asked), at(used), not_before=not_before) is fresh


# (answer asked for at, last attempt at, push at, now) -> (due, stale)
CHECK_ROWS = [
    # a session using an answer that another session fetched earlier: due when that
    # answer turns R old, however recently this session picked it up
    (0, 0, None, R - US, False, False),
    (0, 0, None, R, True, False),
    # a failed attempt at 70: the next try is R after it, the answer keeps serving
    (0, 70, None, 70 + R - US, False, False),
    (0, 70, None, 70 + R, True, False),
    # past the staleness limit: due on every request, and stale (refused unless it works)
    (0, S - 10, None, S, False, False),
    (0, S - 10, None, S + US, True, True),
    # a push newer than the answer and the last attempt: due at once
    (0, 0, 5, 6, True, False),
    (10, 10, 5, 11, False, False),  # the answer is from after the push
    (0, 7, 5, 8, False, False),  # the attempt after the push failed: not forced again
]


@pytest.mark.parametrize(("asked", "attempt", "pushed", "now", "due", "stale"), CHECK_ROWS)
def test_when_a_sessions_mandates_are_due(
    asked: float, attempt: float, pushed: float | None, now: float, due: bool, stale: bool
) -> None:
    """Due when the session's answer is no longer fresh (after the last failed attempt's
    interval), on a push newer than both, or when stale; ``not_before`` is the push."""
    pushed_at = at(pushed) if pushed is not None else None
    check = RULE.check(
        fetched_at=at(asked), last_attempt=at(attempt), pushed_at=pushed_at, now=at(now)
    )
    assert check == MandateCheck(due=due, not_before=pushed_at, stale=stale)


@pytest.mark.parametrize(("asked", "attempt"), [(0, 0), (0, 70), (0, S - 10), (5, 0)])
def test_quiet_until_is_the_first_moment_check_can_say_due(asked: float, attempt: float) -> None:
    """Without a new push, ``check`` says "not due" just before ``quiet_until`` and "due" at it."""
    until = RULE.quiet_until(fetched_at=at(asked), last_attempt=at(attempt))
    before = until - dt.timedelta(microseconds=1)
    args = {"fetched_at": at(asked), "last_attempt": at(attempt), "pushed_at": None}
    assert not RULE.check(**args, now=before).due
    assert RULE.check(**args, now=until).due


@pytest.mark.parametrize(("mode", "asks"), [("chain", True), ("direct", False)])
def test_which_logins_ask_the_registry(mode: str, asks: bool) -> None:
    """A chain login asks the registry even with a fresh answer cached; a direct one need not."""
    assert Freshness.login_asks_registry(mode) is asks


def test_the_store_keeps_an_answer_exactly_as_long_as_it_may_be_used() -> None:
    """The cache entry lives R: it is never used older, so keeping it longer buys nothing."""
    assert RULE.keep_seconds == R


def test_the_injected_clock_is_the_rules_now() -> None:
    """``now()`` reads the injected clock (the manager's and the service's time)."""
    clock = FakeClock(at(42))
    rule = Freshness(dt.timedelta(seconds=R), dt.timedelta(seconds=S), clock=clock.now)
    assert rule.now() == at(42)
    clock.set(at(43))
    assert rule.now() == at(43)


@pytest.mark.parametrize(
    ("interval", "staleness", "message"),
    [(0, 900, "positive"), (60, 59, "at least the re-check interval")],
)
def test_inconsistent_limits_are_refused(interval: float, staleness: float, message: str) -> None:
    """A zero interval, or a staleness limit below the interval, is a programming error."""
    with pytest.raises(ValueError, match=message):
        Freshness(dt.timedelta(seconds=interval), dt.timedelta(seconds=staleness))
