"""How old a registry answer about mandates may be when the gateway uses it: the one rule.

Every decision about mandate freshness is made here, from values, with an
injected clock: when a session's mandates are due for a re-check, how old an
answer a login or a re-check may use, what a revocation push means, and how
long a session may go on while the registry is unreachable. The session
manager, the mandate service and the gate ask ``Freshness`` and keep no limits
of their own. R is ``sessions.mandate_recheck_interval``, S is
``sessions.mandate_max_staleness``.

* **An answer is dated when the gateway asked for it** (``fetched_at``): the
  moment the request to the registry left, not when the answer arrived and not
  when a session started to use it. The registry's state in the answer is no
  older than that moment, so an answer dated ``f`` cannot hide a revocation
  made after ``f``.
* **Fresh**: an answer is used, by a login of either mode or by a session, only
  while ``now < fetched_at + R``, and only if it was asked for at or after the
  latest revocation push for that administrator. So a revocation made at ``V``
  stops being ignored at the latest at ``V + R`` (``fetched_at <= V``).
* **Sessions** keep the date of the answer they use (not the moment they
  picked it up). A re-check is due when that answer stops being fresh, or at
  once when a push is newer than it. A session that picks up an answer another
  session fetched earlier therefore re-checks when *that answer* expires: every
  session of an administrator stops using a revoked employer within R of the
  revocation, however many sessions and replicas there are.
* **Chain logins** (ketenmachtiging) ask the registry: the authorisation in
  eHerkenning counts only together with the fund's mandate at the moment of
  login. Only when the registry cannot be reached may a fresh answer (younger
  than R) stand in; otherwise the login is refused.
* **Direct logins** use a fresh answer from the cache, else ask the registry;
  unreachable and nothing fresh: refused. A login never uses an answer R or
  more old.
* **Registry unreachable during a session**: the session keeps its last answer
  until ``fetched_at + S`` (inclusive), then every request is refused until the
  registry answers. A failed attempt is repeated R later, not on every request
  (the circuit breaker protects the registry), until the answer is past S;
  from then on every request tries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

# Datetimes count in whole microseconds: ``now > t`` is ``now >= t + _TICK``.
_TICK = dt.timedelta(microseconds=1)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class MandateCheck:
    """What a request must do about its session's mandates, at one moment."""

    due: bool
    """Re-check now: the answer is no longer fresh, a push is newer than it, or it is stale."""
    not_before: dt.datetime | None
    """The re-check must use an answer asked for at or after this moment (the latest push)."""
    stale: bool
    """The answer is past the staleness limit: refuse unless the re-check succeeds."""


@dataclass(frozen=True)
class Freshness:
    """The freshness rule for mandate answers (see the module docstring)."""

    recheck_interval: dt.timedelta
    """R: the longest time after it was asked for that an answer is used."""
    max_staleness: dt.timedelta
    """S: how long a session may keep its answer while the registry is unreachable."""
    clock: Callable[[], dt.datetime] = field(default=utc_now, compare=False, repr=False)
    """Wall clock (UTC); tests inject a fake one."""

    def __post_init__(self) -> None:
        if self.recheck_interval <= dt.timedelta(0):
            raise ValueError("the re-check interval must be positive")
        if self.max_staleness < self.recheck_interval:
            raise ValueError("the staleness limit must be at least the re-check interval")

    def now(self) -> dt.datetime:
        return self.clock()

    # -- answers -----------------------------------------------------------------------

    def is_fresh(
        self, fetched_at: dt.datetime, now: dt.datetime, *, not_before: dt.datetime | None = None
    ) -> bool:
        """May an answer asked for at ``fetched_at`` be used at ``now``?

        ``not_before``: the latest push; an answer asked for before it is void.
        """
        if not_before is not None and fetched_at < not_before:
            return False
        return now < fetched_at + self.recheck_interval

    @property
    def keep_seconds(self) -> float:
        """How long the store keeps an answer: after that it is never used (R)."""
        return self.recheck_interval.total_seconds()

    @staticmethod
    def login_asks_registry(mode: str) -> bool:
        """Does a login in this mode ask the registry even when a fresh answer is cached?"""
        return mode == "chain"

    # -- sessions ----------------------------------------------------------------------

    def check(
        self,
        *,
        fetched_at: dt.datetime,
        last_attempt: dt.datetime,
        pushed_at: dt.datetime | None,
        now: dt.datetime,
    ) -> MandateCheck:
        """A session's state: its answer was asked for at ``fetched_at``, its last re-check
        attempt (successful or not) was ``last_attempt``, the latest push for its
        administrator arrived at ``pushed_at``."""
        stale = self.is_stale(fetched_at, now)
        pushed = self.push_pending(pushed_at, fetched_at=fetched_at, last_attempt=last_attempt)
        due = now >= max(fetched_at, last_attempt) + self.recheck_interval or pushed or stale
        return MandateCheck(due=due, not_before=pushed_at, stale=stale)

    def is_stale(self, fetched_at: dt.datetime, now: dt.datetime) -> bool:
        """Is a session's answer past the staleness limit (the registry has been unreachable)?"""
        return now > fetched_at + self.max_staleness

    @staticmethod
    def push_pending(
        pushed_at: dt.datetime | None, *, fetched_at: dt.datetime, last_attempt: dt.datetime
    ) -> bool:
        """Has a push arrived since the session's answer was asked for and its last attempt?

        A push means "this administrator's mandates changed": answers asked for
        before it are no longer fresh. After a failed attempt the session is not
        forced again by the same push; it keeps its answer within the staleness limit.
        """
        return pushed_at is not None and pushed_at > max(fetched_at, last_attempt)

    def quiet_until(self, *, fetched_at: dt.datetime, last_attempt: dt.datetime) -> dt.datetime:
        """The first moment at which ``check`` can say due or stale without a new push."""
        return min(
            max(fetched_at, last_attempt) + self.recheck_interval,
            fetched_at + self.max_staleness + _TICK,
        )
