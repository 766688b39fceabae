"""A small circuit breaker for the registry client: pure state, injectable clock.

States::

    closed ──(threshold consecutive failures)──► open
    open ──(cooldown elapsed; next allow() admits one trial)──► half_open
    half_open ──(trial succeeded)──► closed
    half_open ──(trial failed)──► open (a new cooldown starts)

While open, ``allow()`` is False without touching the network, so a dead
registry costs logins microseconds instead of timeouts. In half-open exactly
one caller gets ``True`` (the trial); the others keep failing fast until the
trial reports back. A trial that never reports (its task was cancelled) is
given up after one more cooldown so the breaker cannot stick half-open.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Counts consecutive failures; every admitted attempt must report success or failure."""

    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or cooldown <= 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown > 0")
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._trial_started_at = 0.0

    @property
    def state(self) -> BreakerState:
        """The state as of now (an open breaker past its cooldown reads ``half_open``)."""
        if self._state == "open" and self._clock() - self._opened_at >= self.cooldown:
            return "half_open"
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """May one attempt go to the network now? Claims the trial slot in half-open."""
        now = self._clock()
        if self._state == "closed":
            return True
        if self._state == "open":
            if now - self._opened_at < self.cooldown:
                return False
            self._state = "half_open"
            self._trial_started_at = now
            return True
        # half_open with a trial outstanding: admit another only if the trial
        # went silent for a whole cooldown (its caller was cancelled).
        if now - self._trial_started_at >= self.cooldown:
            self._trial_started_at = now
            return True
        return False

    def record_success(self) -> BreakerState:
        """The attempt got a usable answer; returns the new state."""
        self._failures = 0
        self._state = "closed"
        return self._state

    def record_failure(self) -> BreakerState:
        """The attempt failed; returns the new state."""
        self._failures += 1
        if self._state == "half_open" or self._failures >= self.failure_threshold:
            self._state = "open"
            self._opened_at = self._clock()
        return self._state
