"""The failover decisions on their own: what a failure means, what may be retried, whom to trust."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.store.failover import (
    NotConnected,
    NotDurable,
    Outcome,
    SentinelView,
    accept_unreplicated,
    classify,
    may_retry,
    newest_primary,
    parse_sentinel_master,
    parse_switch_message,
    primary_confirmed,
)

P = ("10.0.0.1", 6379)
R = ("10.0.0.2", 6379)


def _refused() -> RedisConnectionError:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as exc:
            raise RedisConnectionError("Error 111 connecting") from exc
    except RedisConnectionError as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "outcome", "primary_lost"),
    [
        (ReadOnlyError("You can't write against a read only replica."), Outcome.NOT_RUN, True),
        (ResponseError("NOREPLICAS Not enough good replicas to write."), Outcome.NOT_RUN, True),
        (ResponseError("MASTERDOWN Link with MASTER is down"), Outcome.NOT_RUN, True),
        (MovedError("3999 127.0.0.1:7001"), Outcome.NOT_RUN, False),
        (AskError("3999 127.0.0.1:7001"), Outcome.NOT_RUN, False),
        (TryAgainError("TRYAGAIN"), Outcome.NOT_RUN, False),
        (ClusterDownError("CLUSTERDOWN The cluster is down"), Outcome.NOT_RUN, True),
        (NotConnected(OSError("unreachable")), Outcome.NOT_RUN, True),
        (_refused(), Outcome.NOT_RUN, True),
        (RedisConnectionError("Connection closed by server."), Outcome.MAYBE_RUN, False),
        (RedisTimeoutError("Timeout reading from socket"), Outcome.MAYBE_RUN, False),
        (NotDurable(still_primary=False), Outcome.MAYBE_RUN, True),
        (NotDurable(still_primary=True), Outcome.FINAL, False),
        (ResponseError("WRONGTYPE Operation against a key"), Outcome.FINAL, False),
    ],
)
def test_failures_are_classified_by_whether_the_command_ran(
    exc: BaseException, outcome: Outcome, primary_lost: bool
) -> None:
    """Replies that prove the command did not run are NOT_RUN; a lost reply is MAYBE_RUN."""
    failure = classify(exc)
    assert (failure.outcome, failure.primary_lost) == (outcome, primary_lost)


def test_sentinel_connection_readonly_counts_as_not_run() -> None:
    """redis-py's Sentinel connections turn READONLY into a ConnectionError; still not run."""
    exc = RedisConnectionError("The previous master is now a slave")
    exc.__context__ = ReadOnlyError("READONLY")
    assert classify(exc).outcome is Outcome.NOT_RUN


@pytest.mark.parametrize("op", ["get", "ttl", "ping", "set", "delete", "publish"])
def test_idempotent_operations_are_retried_after_a_lost_reply(op: str) -> None:
    """Reads, SET, DEL and PUBLISH go again even when the first attempt may have run."""
    assert may_retry(op, classify(RedisTimeoutError("timeout")))
    assert may_retry(op, classify(ReadOnlyError("READONLY")))


@pytest.mark.parametrize("op", ["add", "take"])
def test_consume_once_operations_are_not_retried_after_a_lost_reply(op: str) -> None:
    """SET NX and GETDEL are not repeated when the first may have run: a retry would
    report the caller's own first attempt as a replay or an already-used login."""
    assert not may_retry(op, classify(RedisTimeoutError("timeout")))
    assert not may_retry(op, classify(RedisConnectionError("Connection reset by peer")))
    # ... but they are when it certainly did not run, or ran on a replaced primary
    # that no replica acknowledged (that write is discarded when it rejoins).
    assert may_retry(op, classify(ReadOnlyError("READONLY")))
    assert may_retry(op, classify(MovedError("1 127.0.0.1:7001")))
    assert may_retry(op, classify(NotConnected(OSError("refused"))))
    assert may_retry(op, classify(NotDurable(still_primary=False)))


def test_final_errors_and_unknown_operations() -> None:
    """An error reply no retry can fix is not retried; an unknown operation is a bug."""
    assert not may_retry("get", classify(ResponseError("WRONGTYPE")))
    assert not may_retry("set", classify(NotDurable(still_primary=True)))
    with pytest.raises(ValueError, match="unknown store operation"):
        may_retry("incr", classify(ReadOnlyError("READONLY")))


def test_unreplicated_writes_count_only_on_a_confirmed_primary_in_the_default_mode() -> None:
    """``accept_on_primary`` keeps an unacknowledged write only on a confirmed primary;
    ``fail`` never keeps one."""
    assert accept_unreplicated("accept_on_primary", primary_confirmed=True)
    assert not accept_unreplicated("accept_on_primary", primary_confirmed=False)
    assert not accept_unreplicated("fail", primary_confirmed=True)


def _view(
    address: tuple[str, int],
    epoch: int,
    *,
    flags: str = "master",
    state: str | None = None,
) -> SentinelView:
    reply = [b"ip", address[0].encode(), b"port", str(address[1]).encode(), b"flags"]
    reply += [flags.encode(), b"config-epoch", str(epoch).encode()]
    if state is not None:
        reply += [b"failover-state", state.encode()]
    return parse_sentinel_master(reply)


def test_the_newest_configuration_names_the_primary() -> None:
    """A sentinel that missed the switch (older epoch) is outvoted by the newer epoch."""
    assert newest_primary([_view(P, 0), _view(R, 1), _view(P, 0)]) == R
    assert newest_primary([_view(P, 3, flags="s_down,o_down,master,disconnected")]) is None
    assert newest_primary([_view(R, 2), _view(R, 2, flags="s_down,master")]) == R
    assert newest_primary([_view(P, 1), _view(R, 1)]) is None  # disagreement
    assert newest_primary([]) is None


def test_primary_not_confirmed_during_a_manual_failover() -> None:
    """During ``SENTINEL FAILOVER`` the leader flags the old primary: writes there do not count."""
    views = [
        _view(P, 0, flags="master,failover_in_progress,force_failover", state="wait_start"),
        _view(P, 0),
        _view(P, 0),
    ]
    assert not primary_confirmed(views, P)
    views[0] = _view(P, 0, flags="master,failover_in_progress", state="wait_promotion")
    assert not primary_confirmed(views, P)
    assert not primary_confirmed([], P)


def test_primary_confirmed_after_the_switch_despite_a_stale_election_loser() -> None:
    """After a crash failover a sentinel that lost the election may still show a wait_start
    attempt, even stale down flags, on the new primary; an attempt that is neither past
    wait_start nor forced is ignored, and most sentinels seeing it up is enough."""
    views = [
        _view(R, 1),
        _view(R, 1),
        _view(R, 1, flags="s_down,o_down,master,failover_in_progress", state="wait_start"),
    ]
    assert primary_confirmed(views, R)
    assert not primary_confirmed(views, P)
    # A sentinel that has not heard of the switch yet still names P with epoch 0.
    assert primary_confirmed([_view(R, 1), _view(P, 0, flags="s_down,o_down,master")], R)
    # The leader acting on the replicas (past wait_start) does count.
    acting = _view(R, 1, flags="master,failover_in_progress", state="select_slave")
    assert not primary_confirmed([_view(R, 1), _view(R, 1), acting], R)


def test_primary_most_sentinels_cannot_reach_is_not_confirmed() -> None:
    """A primary the store reaches but most sentinels see down is about to be replaced
    (a partition): writes on it do not count; one sentinel seeing it up is not enough."""
    down = "s_down,master,disconnected"
    assert not primary_confirmed([_view(P, 0), _view(P, 0, flags=down), _view(P, 0, flags=down)], P)
    assert primary_confirmed([_view(P, 0), _view(P, 0), _view(P, 0, flags=down)], P)
    # ... while the store still follows a new primary one sentinel already sees up.
    assert newest_primary([_view(R, 1), _view(R, 1, flags=down)]) == R


def test_switch_messages_name_the_new_primary_of_our_service_only() -> None:
    """``+switch-master <name> <old ip> <old port> <new ip> <new port>``."""
    assert parse_switch_message(b"gw 10.0.0.1 6379 10.0.0.2 6379", "gw") == R
    assert parse_switch_message(b"other 10.0.0.1 6379 10.0.0.2 6379", "gw") is None
    assert parse_switch_message(b"gw garbage", "gw") is None
    assert parse_switch_message(b"gw 10.0.0.1 6379 10.0.0.2 port", "gw") is None


def test_sentinel_master_reply_as_a_map() -> None:
    """RESP3 answers ``SENTINEL MASTER`` with a map; it parses the same."""
    view = parse_sentinel_master(
        {b"ip": b"10.0.0.2", b"port": b"6379", b"flags": b"master", b"config-epoch": b"4"}
    )
    assert view == SentinelView(R, 4, failover_in_progress=False, usable=True)
    with pytest.raises(ValueError, match="unexpected"):
        parse_sentinel_master(b"nope")
