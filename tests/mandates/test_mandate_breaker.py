"""The circuit breaker's state machine, driven by a hand-wound clock."""

from __future__ import annotations

import pytest

from gateway.mandates.breaker import CircuitBreaker
from tests.support.clock import FakeClock


def test_stays_closed_below_the_threshold(clock: FakeClock) -> None:
    """Fewer consecutive failures than the threshold keep the circuit closed."""
    b = CircuitBreaker(3, 10, clock=clock.time)
    b.record_failure()
    b.record_failure()
    assert b.state == "closed"
    assert b.allow()


def test_a_success_resets_the_failure_count(clock: FakeClock) -> None:
    """Only consecutive failures count: a success in between starts the count again."""
    b = CircuitBreaker(3, 10, clock=clock.time)
    b.record_failure()
    b.record_failure()
    b.record_success()
    b.record_failure()
    b.record_failure()
    assert b.state == "closed"


def test_opens_at_the_threshold_and_refuses_until_cooldown(clock: FakeClock) -> None:
    """N consecutive failures open the circuit; it refuses every attempt during the cooldown."""
    b = CircuitBreaker(3, 10, clock=clock.time)
    for _ in range(3):
        b.record_failure()
    assert b.state == "open"
    clock.advance(9.9)
    assert not b.allow()
    assert b.state == "open"


def test_half_open_admits_exactly_one_trial(clock: FakeClock) -> None:
    """After the cooldown one trial is admitted; others are refused until it reports."""
    b = CircuitBreaker(1, 10, clock=clock.time)
    b.record_failure()
    clock.advance(10)
    assert b.state == "half_open"
    assert b.allow()
    assert not b.allow()
    assert not b.allow()


def test_successful_trial_closes(clock: FakeClock) -> None:
    """A successful trial closes the circuit and admits everyone again."""
    b = CircuitBreaker(1, 10, clock=clock.time)
    b.record_failure()
    clock.advance(10)
    assert b.allow()
    assert b.record_success() == "closed"
    assert b.allow()
    assert b.allow()


def test_failed_trial_reopens_with_a_new_cooldown(clock: FakeClock) -> None:
    """A failed trial opens the circuit again for a full cooldown from that moment."""
    b = CircuitBreaker(5, 10, clock=clock.time)
    for _ in range(5):
        b.record_failure()
    clock.advance(10)
    assert b.allow()
    assert b.record_failure() == "open"
    clock.advance(9)
    assert not b.allow()
    clock.advance(1)
    assert b.allow()


def test_a_silent_trial_is_given_up_after_a_cooldown(clock: FakeClock) -> None:
    """A trial that never reports (cancelled caller) cannot leave the breaker stuck half-open."""
    b = CircuitBreaker(1, 10, clock=clock.time)
    b.record_failure()
    clock.advance(10)
    assert b.allow()
    clock.advance(10)
    assert b.allow()


def test_rejects_nonsense_thresholds() -> None:
    """A threshold below one or a non-positive cooldown is a programming error."""
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(0, 10)
    with pytest.raises(ValueError, match="cooldown"):
        CircuitBreaker(1, 0)
