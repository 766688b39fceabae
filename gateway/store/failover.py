"""What a failed or unreplicated Redis operation means, and whether to try it again.

Pure decisions, values in and values out; :mod:`gateway.store.redis_store` and
:mod:`gateway.store.topology` act on them. Three questions:

1. **Did the command run?** (:func:`classify`) A reply such as ``READONLY``,
   ``MOVED`` or ``CLUSTERDOWN``, or a connection that could not even be
   opened, means the server did not run it (``NOT_RUN``). A timeout or a reset
   after the command was sent means nobody knows (``MAYBE_RUN``). Any other
   error reply (``WRONGTYPE``, ``NOAUTH``) is final (``FINAL``).
2. **May it be sent again?** (:func:`may_retry`) Once, after the store has
   looked for the current primary:

   ================  ==========================  =========================================
   operation         Redis                       sent again after
   ================  ==========================  =========================================
   ``get``           ``GET``                     any failure (reads change nothing)
   ``ttl``           ``PTTL``                    any failure
   ``ping``          ``PING``                    any failure
   ``set``           ``SET PX`` (+ ``WAIT``)     any failure: writing the same value
                                                 again has the same effect
   ``delete``        ``DEL`` (+ ``WAIT``)        any failure: deleting twice is deleting
   ``publish``       ``PUBLISH``                 any failure: every message the gateway
                                                 sends is an idempotent invalidation
   ``replace_if``    Lua ``EVAL`` (+ ``WAIT``)   any failure: a second run changes
                                                 nothing the first did not; after a first
                                                 that stored, it answers "not stored"
                                                 and the caller reads the value again
   ``add``           ``SET NX PX`` (+ ``WAIT``)  only when the first attempt certainly
                                                 did not take effect (see below)
   ``take``          ``GETDEL`` (+ ``WAIT``)     only when the first attempt certainly
                                                 did not take effect
   ================  ==========================  =========================================

   ``take_token`` and ``push_bounded`` (Lua ``EVAL`` + ``WAIT``: login-start
   buckets, a browser's pending logins) follow the ``add``/``take`` rule: a second
   run would spend a token twice or push the same pending login twice.

   ``add`` (replay cache, locks) and ``take`` (single-use login state) are not
   idempotent: if a first attempt took effect and only its reply was lost, a
   second one answers "already there" (a replayed assertion) or "already
   taken" (an expired login) for the caller's own first attempt. So they are
   repeated only when the first attempt did not run (``NOT_RUN``), or ran on a
   node that is no longer the primary while no replica acknowledged it: that
   write is discarded when the old primary rejoins as a replica. In the rare
   case that the replica received it without acknowledging in time, the
   repeated ``add``/``take`` answers "already there"/"already taken": a failed
   login, never a second use.
3. **Is an unreplicated write acceptable?** (:func:`accept_unreplicated`)
   After every write the store waits (``WAIT``) for ``replica_acks`` replicas.
   A write that no replica acknowledged in time is accepted only if the mode
   allows it (``accept_on_primary``, the default) and the node that ran it is
   confirmed as the primary with no failover under way; otherwise the write
   counts as not durable and the caller gets ``StoreUnavailable`` (after one
   repetition where the table above allows it).
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import Literal

from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

UnreplicatedMode = Literal["accept_on_primary", "fail"]


class Outcome(enum.Enum):
    """What a failure says about whether the command took effect."""

    NOT_RUN = "not_run"
    """The server did not run it: safe to send any command again."""
    MAYBE_RUN = "maybe_run"
    """It may have run and the reply was lost: only idempotent commands go again."""
    FINAL = "final"
    """The server answered with an error no retry can fix."""


@dataclass(frozen=True)
class Failure:
    """A classified failure of one attempt."""

    outcome: Outcome
    primary_lost: bool
    """The node is not (or no longer) a writable primary, or cannot be reached: a
    switch to another primary is the likely way out, so it is worth waiting for."""
    reason: str
    """A short, log-safe name (an exception type or a Redis error code)."""


class NotConnected(Exception):
    """No connection to the node could be opened: nothing was sent."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(type(cause).__name__)
        self.cause = cause


class NotDurable(Exception):
    """No replica acknowledged a write in time and the write was not accepted anyway."""

    def __init__(self, *, still_primary: bool) -> None:
        super().__init__("no_replica" if still_primary else "not_replicated")
        self.still_primary = still_primary
        """The node is confirmed as the primary: only a returning replica helps, not a
        retry. Otherwise it ran on a node that may be replaced, and may vanish."""


_IDEMPOTENT = frozenset({"get", "ttl", "ping", "set", "delete", "publish", "replace_if"})
_NOT_IDEMPOTENT = frozenset({"add", "take", "take_token", "push_bounded"})
OPERATIONS = _IDEMPOTENT | _NOT_IDEMPOTENT

# Error replies (first word) after which the server certainly did not run the
# command; ``primary_lost`` for those that mean "this node does not take writes".
_NOT_RUN_CODES: dict[str, bool] = {
    "READONLY": True,  # a replica now (the old primary after a failover)
    "NOREPLICAS": True,  # min-replicas-to-write not met: its replicas left it
    "MASTERDOWN": True,  # a replica whose link to the primary is down
    "LOADING": False,  # restarting, loading its data set
    "MOVED": False,  # Cluster: another node owns the slot
    "ASK": False,
    "TRYAGAIN": False,
    "CLUSTERDOWN": True,
}


def classify(exc: BaseException) -> Failure:
    """Classify an exception raised by redis-py (or by the store's own executor)."""
    if isinstance(exc, NotDurable):
        if exc.still_primary:
            return Failure(Outcome.FINAL, primary_lost=False, reason="no_replica")
        return Failure(Outcome.MAYBE_RUN, primary_lost=True, reason="not_replicated")
    if isinstance(exc, NotConnected):
        return Failure(Outcome.NOT_RUN, primary_lost=True, reason=type(exc.cause).__name__)
    if isinstance(exc, ReadOnlyError | MasterDownError):
        return Failure(Outcome.NOT_RUN, primary_lost=True, reason=type(exc).__name__)
    if isinstance(exc, BusyLoadingError | MovedError | AskError | TryAgainError):
        return Failure(Outcome.NOT_RUN, primary_lost=False, reason=type(exc).__name__)
    if isinstance(exc, ClusterDownError):
        return Failure(Outcome.NOT_RUN, primary_lost=True, reason=type(exc).__name__)
    if isinstance(exc, RedisConnectionError) and isinstance(exc.__context__, ReadOnlyError):
        # redis-py's Sentinel connections turn READONLY into a ConnectionError.
        return Failure(Outcome.NOT_RUN, primary_lost=True, reason="ReadOnlyError")
    if isinstance(exc, RedisConnectionError) and isinstance(
        exc.__cause__ or exc.__context__, ConnectionRefusedError
    ):
        # Nothing listens there (a crashed or stopped node): nothing was sent.
        return Failure(Outcome.NOT_RUN, primary_lost=True, reason="ConnectionRefusedError")
    if isinstance(exc, RedisConnectionError) and type(exc).__name__ == "MasterNotFoundError":
        return Failure(Outcome.NOT_RUN, primary_lost=True, reason="MasterNotFoundError")
    if isinstance(exc, ResponseError):
        code = str(exc).split(" ", 1)[0].upper()
        if code in _NOT_RUN_CODES:
            return Failure(Outcome.NOT_RUN, primary_lost=_NOT_RUN_CODES[code], reason=code)
        return Failure(Outcome.FINAL, primary_lost=False, reason=type(exc).__name__)
    if isinstance(exc, RedisClusterException):
        # Raised before anything is sent: no node for the slot, topology unknown.
        return Failure(Outcome.NOT_RUN, primary_lost=True, reason=type(exc).__name__)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError | asyncio.TimeoutError):
        return Failure(Outcome.MAYBE_RUN, primary_lost=False, reason=type(exc).__name__)
    return Failure(Outcome.FINAL, primary_lost=False, reason=type(exc).__name__)


def may_retry(operation: str, failure: Failure) -> bool:
    """Whether ``operation`` may be sent once more after ``failure`` (see the table above)."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown store operation {operation!r}")
    if failure.outcome is Outcome.FINAL:
        return False
    if failure.outcome is Outcome.NOT_RUN or operation in _IDEMPOTENT:
        return True
    # add/take that may have run: only when it ran on a node that lost its primary
    # role without any replica acknowledging it, so the surviving data never saw it.
    return failure.reason == "not_replicated"


def accept_unreplicated(mode: UnreplicatedMode, primary_confirmed: bool) -> bool:
    """Whether a write that no replica acknowledged in time still counts as done."""
    return mode == "accept_on_primary" and primary_confirmed


@dataclass(frozen=True)
class SentinelView:
    """What one sentinel says about the monitored primary (``SENTINEL MASTER``)."""

    address: tuple[str, int]
    config_epoch: int
    failover_in_progress: bool
    usable: bool
    """Flagged as a master, and neither subjectively nor objectively down."""


def parse_sentinel_master(reply: object) -> SentinelView:
    """Parse a raw ``SENTINEL MASTER <name>`` reply (RESP2 list or RESP3 map)."""
    if isinstance(reply, dict):
        pairs = {_text(k): _text(v) for k, v in reply.items()}
    elif isinstance(reply, list | tuple):
        items = [_text(x) for x in reply]
        pairs = dict(zip(items[0::2], items[1::2], strict=False))
    else:
        raise ValueError("unexpected SENTINEL MASTER reply")
    flags = set(pairs.get("flags", "").split(","))
    state = pairs.get("failover-state", "")
    # Only a failover that has gone past wait_start (the leader acting on replicas)
    # or one an operator forced (SENTINEL FAILOVER) counts. Sentinels that lost a
    # leader election keep the flag in wait_start until their attempt times out,
    # even after they learnt the winner's new configuration, sometimes with stale
    # s_down/o_down flags on the new primary; such an attempt cannot go on.
    acting = state not in ("", "none", "wait_start") or "force_failover" in flags
    return SentinelView(
        address=(pairs["ip"], int(pairs["port"])),
        config_epoch=int(pairs.get("config-epoch", "0")),
        failover_in_progress="failover_in_progress" in flags and acting,
        # "disconnected" is not in the list: right after a switch a sentinel's link to
        # the new primary is still being set up, which says nothing about the primary.
        usable="master" in flags and not flags & {"s_down", "o_down"},
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _newest(views: list[SentinelView]) -> list[SentinelView]:
    """The views of the newest configuration, if the sentinels holding it agree on the
    primary; else none."""
    if not views:
        return []
    epoch = max(v.config_epoch for v in views)
    newest = [v for v in views if v.config_epoch == epoch]
    if any(v.address != newest[0].address for v in newest):
        return []
    return newest


def newest_primary(views: list[SentinelView]) -> tuple[str, int] | None:
    """The primary named by the sentinels with the newest configuration, if one of them
    sees it up.

    Sentinels that missed a switch still name the old primary with an older
    ``config-epoch`` until the others' hello messages reach them (about 2 s).
    """
    newest = _newest(views)
    return newest[0].address if any(v.usable for v in newest) else None


def primary_confirmed(views: list[SentinelView], address: tuple[str, int]) -> bool:
    """Whether the sentinels that answered confirm ``address`` as the primary, with no
    failover of it under way.

    The sentinels with the newest configuration must name ``address`` and most of
    them see it up (a primary that we reach but most sentinels do not is about
    to be replaced). A failover in progress is shown only by the sentinel running
    it, against the configuration it is replacing: it counts if it concerns
    ``address`` or the newest configuration.
    """
    newest = _newest(views)
    if not newest or newest[0].address != address:
        return False
    if sum(v.usable for v in newest) * 2 <= len(newest):
        return False
    epoch = newest[0].config_epoch
    return not any(
        v.failover_in_progress and (v.address == address or v.config_epoch >= epoch) for v in views
    )


def parse_switch_message(data: bytes | str, service: str) -> tuple[str, int] | None:
    """The new primary from a ``+switch-master`` message for ``service``, else ``None``.

    The message is ``<name> <old-ip> <old-port> <new-ip> <new-port>``.
    """
    parts = _text(data).split()
    if len(parts) != 5 or parts[0] != service:
        return None
    try:
        return parts[3], int(parts[4])
    except ValueError:
        return None
