"""Durability and retries of RedisStore against real redis-server processes.

What ``WAIT`` after a write does with and without a replica in both modes, and
which operations are sent a second time after a reply was lost (a frozen server:
the first attempt runs when it thaws).
"""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from gateway.errors import StoreUnavailable
from gateway.store.factory import StoreSettings, create_store
from gateway.store.redis_store import RedisStore
from tests.support.redis import RedisServer


def _calls(server: RedisServer, command: str) -> int:
    for line in server.cli("INFO", "commandstats").splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def test_a_write_a_replica_acknowledged_counts(redis_server: RedisServer) -> None:
    """With a replica attached, a write waits for it and is done (not "unreplicated")."""
    with RedisServer(extra_args=["--replicaof", "127.0.0.1", str(redis_server.port)]) as replica:
        for _ in range(200):
            if "master_link_status:up" in replica.cli("INFO", "replication"):
                break
            await asyncio.sleep(0.05)
        store = create_store(
            StoreSettings(url=redis_server.url, replica_acks=1, unreplicated_writes="fail"),
            environ={},
        )
        assert isinstance(store, RedisStore)
        try:
            await store.set("k", b"v", ttl=30)
            assert await store.add("lock", b"1", ttl=30) is True
            assert await store.take("k") == b"v"
            await store.delete("lock")
            assert store.unreplicated_writes == 0
            assert replica.cli("GET", "gw:k").strip() == ""
        finally:
            await store.close()


async def test_without_a_replica_strict_mode_refuses_the_write(redis_server: RedisServer) -> None:
    """``unreplicated_writes: fail``: no replica acknowledged, so the caller gets a 503."""
    store = create_store(
        StoreSettings(url=redis_server.url, replica_acks=1, unreplicated_writes="fail"),
        environ={},
    )
    try:
        with pytest.raises(StoreUnavailable, match="no_replica"):
            await store.set("k", b"v", ttl=30)
        with pytest.raises(StoreUnavailable, match="no_replica"):
            await store.add("lock", b"1", ttl=30)
    finally:
        await store.close()


async def test_without_a_replica_default_mode_keeps_writes_on_the_primary(
    redis_server: RedisServer,
) -> None:
    """``accept_on_primary``: the server confirms it is a primary, so the write stands."""
    store = create_store(StoreSettings(url=redis_server.url, replica_acks=1), environ={})
    assert isinstance(store, RedisStore)
    try:
        await store.set("k", b"v", ttl=30)
        await store.set("k2", b"w", ttl=30)
        assert await store.get("k") == b"v"
        assert store.unreplicated_writes == 2
    finally:
        await store.close()


async def test_a_write_on_a_replica_is_not_acknowledged(redis_server: RedisServer) -> None:
    """A store pointed at a node that is a replica gets READONLY and never reports success."""
    with RedisServer(extra_args=["--replicaof", "127.0.0.1", str(redis_server.port)]) as replica:
        store = create_store(StoreSettings(url=replica.url, replica_acks=1), environ={})
        try:
            for call in (store.set("k", b"v", 30), store.add("k", b"v", 30), store.take("k")):
                with pytest.raises(StoreUnavailable, match="ReadOnlyError"):
                    await call
        finally:
            await store.close()


class ReplyLosingProxy:
    """A TCP proxy in front of Redis that can lose the replies on its open connections.

    Commands still reach Redis and run; only their answers never come back, as
    when a connection breaks after the command was sent. Connections opened
    afterwards work normally, so a retry on a new connection gets through.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._lossy: set[asyncio.StreamWriter] = set()
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def lose_replies(self) -> None:
        """From now on, drop every reply on the connections open right now."""
        self._lossy |= self._open

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._open.add(writer)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, lossy: bool) -> None:
            try:
                while data := await src.read(65536):
                    if lossy and writer in self._lossy:
                        continue
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        tasks = [
            asyncio.create_task(pump(reader, up_writer, lossy=False)),
            asyncio.create_task(pump(up_reader, writer, lossy=True)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._open.discard(writer)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def test_lost_reply_repeats_a_set_but_never_a_consume_once_take(
    redis_server: RedisServer,
) -> None:
    """When a reply is lost after the command ran, a SET is sent again (same effect) but a
    GETDEL of single-use login state is not: a second one would find nothing and call
    this very login expired."""
    proxy = ReplyLosingProxy(redis_server.port)
    await proxy.start()
    store = create_store(StoreSettings(url=proxy.url, socket_timeout=0.3), environ={})
    try:
        await store.set("pending", b"login", ttl=30)
        # Several pooled connections, so each attempt below takes an open one first.
        await asyncio.gather(*(store.get(f"warm{i}") for i in range(3)))
        sets, getdels = _calls(redis_server, "set"), _calls(redis_server, "getdel")

        proxy.lose_replies()
        await store.set("session", b"record", ttl=30)
        assert _calls(redis_server, "set") == sets + 2

        proxy.lose_replies()
        with pytest.raises(StoreUnavailable, match="TimeoutError"):
            await store.take("pending")
        assert _calls(redis_server, "getdel") == getdels + 1

        assert await store.get("pending") is None
        assert await store.get("session") == b"record"
    finally:
        await store.close()
        await proxy.close()


def test_durability_defaults_follow_the_deployment_kind() -> None:
    """``replica_acks: auto`` waits for one replica with Sentinel or Cluster, none for one
    server; the other knobs pass through."""
    settings = StoreSettings(replica_ack_timeout=0.2, unreplicated_writes="fail")
    assert settings.durability("sentinel").replica_acks == 1
    assert settings.durability("cluster").replica_acks == 1
    assert settings.durability("standalone").replica_acks == 0
    assert settings.durability("sentinel").timeout_ms == 200
    assert settings.durability("sentinel").unreplicated == "fail"
    assert StoreSettings(replica_acks=2).durability("standalone").replica_acks == 2


def test_durability_settings_are_checked() -> None:
    """A WAIT longer than the socket timeout, or an impossible replica count, is a config error."""
    with pytest.raises(ValidationError, match="replica_ack_timeout"):
        StoreSettings(replica_ack_timeout=0.5, socket_timeout=0.5)
    with pytest.raises(ValidationError, match="replica_acks"):
        StoreSettings(replica_acks=9)
    with pytest.raises(ValidationError, match="unreplicated_writes"):
        StoreSettings(unreplicated_writes="maybe")  # type: ignore[arg-type]
