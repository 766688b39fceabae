"""The store's pipelined connection against a real ``redis-server``.

Replies must reach the right caller however many commands are in flight, an
error reply must raise what redis-py would raise (so the failover rules apply
unchanged), and a frozen, restarted or password-protected server must behave
as with redis-py: a clear failure, then a working connection again.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.store.failover import NotConnected, Outcome, classify
from gateway.store.pipelined import Lane, lane_for
from tests.support.redis import RedisServer, free_port

pytestmark = pytest.mark.integration


def _lane(server: RedisServer, **extra: object) -> Lane:
    settings: dict[str, object] = {
        "host": "127.0.0.1",
        "port": server.port,
        "socket_timeout": 1.0,
        "socket_connect_timeout": 1.0,
    }
    settings.update(extra)
    return Lane(settings)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


async def test_many_commands_in_flight_each_get_their_own_reply(server: RedisServer) -> None:
    lane = _lane(server)
    try:
        writes = [
            lane.execute(("SET", f"k{i}", f"value-{i}".encode() * (i % 50 + 1))) for i in range(500)
        ]
        assert set(await asyncio.gather(*writes)) == {b"OK"}
        values = await asyncio.gather(*(lane.execute(("GET", f"k{i}")) for i in range(500)))
        assert values == [f"value-{i}".encode() * (i % 50 + 1) for i in range(500)]
        assert await lane.execute(("GET", "absent")) is None
    finally:
        lane.close()


async def test_an_error_reply_raises_redis_py_s_class_and_the_connection_stays_usable(
    server: RedisServer,
) -> None:
    lane = _lane(server)
    try:
        await lane.execute(("RPUSH", "a-list", "x"))
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await lane.execute(("GET", "a-list"))
        assert await lane.execute(("SET", "after", "ok")) == b"OK"
        # A replica refuses writes: READONLY is ReadOnlyError, which the store's
        # failover rules read as "not run, the primary is gone".
        server.cli("REPLICAOF", "127.0.0.1", str(free_port()))
        with pytest.raises(ReadOnlyError) as caught:
            await lane.execute(("SET", "k", "v"))
        failure = classify(caught.value)
        assert failure.outcome is Outcome.NOT_RUN and failure.primary_lost
        assert await lane.execute(("GET", "after")) == b"ok"
    finally:
        lane.close()


async def test_a_cancelled_caller_does_not_shift_the_replies_of_the_others(
    server: RedisServer,
) -> None:
    lane = _lane(server)
    try:
        await lane.execute(("SET", "one", "1"))
        await lane.execute(("SET", "two", "2"))
        first = asyncio.ensure_future(lane.execute(("GET", "one")))
        second = lane.execute(("GET", "two"))
        first.cancel()
        assert await second == b"2"
        assert await lane.execute(("GET", "one")) == b"1"
    finally:
        lane.close()


async def test_a_frozen_server_times_out_and_the_lane_recovers_after_it(
    server: RedisServer,
) -> None:
    lane = _lane(server, socket_timeout=0.3)
    await lane.execute(("SET", "k", "v"))
    assert server._proc is not None
    os.kill(server._proc.pid, signal.SIGSTOP)
    try:
        results = await asyncio.gather(
            lane.execute(("GET", "k")), lane.execute(("GET", "k")), return_exceptions=True
        )
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert classify(results[0]).outcome is Outcome.MAYBE_RUN
    finally:
        os.kill(server._proc.pid, signal.SIGCONT)
    assert await lane.execute(("GET", "k")) == b"v"
    lane.close()


async def test_a_restarted_server_fails_the_commands_on_the_old_connection_then_works(
    server: RedisServer,
) -> None:
    lane = _lane(server)
    await lane.execute(("SET", "k", "v"))
    server.stop()
    with pytest.raises((RedisConnectionError, NotConnected)):
        await lane.execute(("GET", "k"))
    # Nothing listens: opening fails before anything is sent.
    with pytest.raises(NotConnected) as caught:
        await lane.execute(("GET", "k"))
    assert classify(caught.value).outcome is Outcome.NOT_RUN
    server.start()
    assert await lane.execute(("GET", "k")) is None  # a new, empty server
    lane.close()


async def test_password_and_database_come_from_the_redis_py_client() -> None:
    with RedisServer(extra_args=["--requirepass", "s3cret-pw"]) as srv:
        client = Redis(host="127.0.0.1", port=srv.port, db=3, password="s3cret-pw")
        try:
            await client.set("in-db-3", b"yes")
            lane = lane_for(client)
            assert lane is not None
            try:
                assert await lane.execute(("GET", "in-db-3")) == b"yes"
            finally:
                lane.close()
            wrong = lane_for(Redis(host="127.0.0.1", port=srv.port, password="wrong"))
            assert wrong is not None
            with pytest.raises(NotConnected):
                await wrong.execute(("GET", "in-db-3"))
            wrong.close()
        finally:
            await client.aclose()


def test_tls_and_unix_socket_clients_stay_on_redis_py() -> None:
    assert lane_for(Redis(host="127.0.0.1", port=6399, ssl=True)) is None
    assert lane_for(Redis(unix_socket_path="/tmp/redis.sock")) is None
    assert lane_for(Redis(host="127.0.0.1", port=6399)) is not None


def test_the_lane_works_on_uvloop_as_the_gateway_runs_it(server: RedisServer) -> None:
    """``gateway serve`` runs on uvloop, whose transports are not asyncio's classes."""
    import uvloop

    async def scenario() -> list[object]:
        lane = _lane(server)
        try:
            await lane.execute(("SET", "k", "on-uvloop"))
            return list(await asyncio.gather(*(lane.execute(("GET", "k")) for _ in range(50))))
        finally:
            lane.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(scenario()) == [b"on-uvloop"] * 50
