"""The token-bucket rule behind ``Store.take_token``, as one pure function.

A bucket holds up to ``burst`` tokens and gains ``rate`` tokens per second; a
request takes one token or is refused with the time until one is there. It is
kept in the GCRA form (generic cell rate algorithm): one number per bucket,
the *theoretical arrival time* ``tat``, the moment the bucket would be full
again. That makes the stored state a single value with a natural expiry (the
key can vanish at ``tat``: a full bucket and an absent one are the same), and
the check a few arithmetic steps that Redis runs atomically in a short Lua
script (``gateway.store.redis_store``); ``MemoryStore`` calls this function.

With ``interval = 1 / rate``::

    tat     = max(stored tat, now)            # an absent key is a full bucket
    new_tat = tat + interval                  # this request's token
    allowed = new_tat - burst * interval <= now
    wait    = (new_tat - burst * interval) - now   when refused

so ``burst`` requests pass at once, then one every ``interval``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BucketDecision:
    """The outcome of one ``take`` at one moment."""

    allowed: bool
    tat: float
    """The bucket's state to keep (unchanged when refused)."""
    wait: float
    """Seconds until a token is there (0 when allowed)."""


def take(now: float, tat: float | None, *, rate: float, burst: int) -> BucketDecision:
    """Take one token at ``now`` from a bucket whose stored state is ``tat`` (None: absent)."""
    if not rate > 0 or burst < 1:
        raise ValueError(f"rate must be > 0 and burst >= 1, got {rate!r}, {burst!r}")
    interval = 1.0 / rate
    current = now if tat is None or tat < now else tat
    new_tat = current + interval
    allow_at = new_tat - burst * interval
    if allow_at > now:
        return BucketDecision(False, current, allow_at - now)
    return BucketDecision(True, new_tat, 0.0)
