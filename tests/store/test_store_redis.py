"""RedisStore specifics: outages, credentials, TLS, the key prefix, and URL parsing."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
import structlog
from pydantic import ValidationError

from gateway.errors import StoreUnavailable
from gateway.store.base import Store
from gateway.store.factory import StoreSettings, StoreTarget, create_store, parse_store_url
from gateway.store.memory import MemoryStore
from gateway.store.redis_store import RedisStore
from gateway_dev.devkeys import rsa_keypair
from tests.support.redis import RedisServer, TlsFiles, eventually


def _store(server: RedisServer, **settings: object) -> Store:
    return create_store(StoreSettings(url=server.url, **settings), environ={})  # type: ignore[arg-type]


async def _collect(store: Store, channel: str, out: list[bytes]) -> None:
    async for message in store.subscribe(channel):
        out.append(message)


async def _publish_until(store: Store, channel: str, got: list[bytes], message: bytes) -> None:
    for _ in range(500):
        if message in got:
            return
        with contextlib.suppress(StoreUnavailable):
            await store.publish(channel, message)
        await asyncio.sleep(0.02)
    raise AssertionError(f"{message!r} never arrived")


async def test_outage_fails_closed_and_recovers_by_itself(redis_server: RedisServer) -> None:
    """With Redis stopped every call raises StoreUnavailable; once back, the same store works."""
    store = _store(redis_server)
    try:
        await store.set("k", b"v", ttl=10)
        redis_server.stop()
        for call in (
            store.get("k"),
            store.set("k", b"v", 10),
            store.add("k2", b"v", 10),
            store.take("k"),
            store.delete("k"),
            store.ttl("k"),
            store.publish("c", b"m"),
            store.ping(),
        ):
            with pytest.raises(StoreUnavailable):
                await call
        redis_server.start()
        await store.ping()
        await store.set("k", b"again", ttl=10)
        assert await store.get("k") == b"again"
    finally:
        await store.close()


async def test_subscription_survives_an_outage(redis_server: RedisServer) -> None:
    """A live subscription reconnects by itself after Redis restarts and receives messages again."""
    store = create_store(StoreSettings(url=redis_server.url, subscribe_backoff_max=0.2), environ={})
    got: list[bytes] = []
    task = asyncio.create_task(_collect(store, "inval", got))
    try:
        with structlog.testing.capture_logs() as logs:
            await _publish_until(store, "inval", got, b"before")
            redis_server.stop()
            await eventually(
                lambda: any(e["event"] == "store_subscription_lost" for e in logs), within=5
            )
            redis_server.start()
            await _publish_until(store, "inval", got, b"after")
        assert any(e["event"] == "store_subscription_restored" for e in logs)
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


async def test_key_prefix_is_applied_to_keys(redis_server: RedisServer) -> None:
    """Keys carry the deployment prefix in Redis, so deployments sharing a Redis do not collide."""
    a = _store(redis_server, key_prefix="fund-a:")
    b = _store(redis_server, key_prefix="fund-b:")
    try:
        await a.set("session:{x}", b"A", ttl=10)
        await b.set("session:{x}", b"B", ttl=10)
        assert await a.get("session:{x}") == b"A"
        assert await b.get("session:{x}") == b"B"
        keys = sorted(redis_server.cli("--raw", "KEYS", "*").split())
        assert keys == ["fund-a:session:{x}", "fund-b:session:{x}"]
    finally:
        await a.close()
        await b.close()


async def test_every_key_gets_a_ttl_in_redis(redis_server: RedisServer) -> None:
    """What the store writes always has a TTL in Redis itself (never persistent keys)."""
    store = _store(redis_server)
    try:
        await store.set("a", b"1", ttl=0.0004)
        await store.set("b", b"1", ttl=5)
        await store.add("c", b"1", ttl=5)
        for key in ("gw:b", "gw:c"):
            pttl = int(redis_server.cli("PTTL", key))
            assert 0 < pttl <= 5000
    finally:
        await store.close()


async def test_password_from_file(tmp_path: Path) -> None:
    """The password is read from a secret file; without it the store is unavailable."""
    server = RedisServer(extra_args=["--requirepass", "s3cret-pass"])
    secret = tmp_path / "redis-password"
    secret.write_text("s3cret-pass\n")
    with server:
        good = _store(server, password_file=secret)
        bad = _store(server)
        try:
            await good.set("k", b"v", ttl=10)
            assert await good.get("k") == b"v"
            with pytest.raises(StoreUnavailable) as err:
                await bad.get("k")
            assert "s3cret" not in str(err.value)
        finally:
            await good.close()
            await bad.close()


async def test_username_and_password_from_environment() -> None:
    """An ACL user from the URL authenticates with the password from the named env variable."""
    acl = "user gw on >env-pass ~* &* +@all\nuser default off\n"
    with RedisServer(config_text=acl) as server:
        url = f"redis://gw@127.0.0.1:{server.port}/0"
        store = create_store(
            StoreSettings(url=url, password_env="REDIS_PW"), environ={"REDIS_PW": "env-pass"}
        )
        try:
            await store.set("k", b"v", ttl=10)
            assert await store.get("k") == b"v"
        finally:
            await store.close()


async def test_tls_with_client_certificate(tmp_path: Path) -> None:
    """``rediss://`` verifies the server against the configured CA and sends a client cert."""
    server_kp = rsa_keypair("localhost")
    client_kp = rsa_keypair("gateway-client")
    server_kp.write(tmp_path / "server.key", tmp_path / "server.crt")
    client_kp.write(tmp_path / "client.key", tmp_path / "client.crt")
    ca = tmp_path / "ca.crt"
    ca.write_bytes(server_kp.cert_pem + client_kp.cert_pem)
    tls = TlsFiles(tmp_path / "server.crt", tmp_path / "server.key", ca, auth_clients=True)
    with RedisServer(tls=tls) as server:
        assert server.url.startswith("rediss://")
        store = _store(
            server,
            tls_ca_file=ca,
            tls_cert_file=tmp_path / "client.crt",
            tls_key_file=tmp_path / "client.key",
        )
        untrusting = _store(server, tls_ca_file=tmp_path / "client.crt")
        try:
            await store.set("k", b"v", ttl=10)
            assert await store.get("k") == b"v"
            with pytest.raises(StoreUnavailable):
                await untrusting.ping()
        finally:
            await store.close()
            await untrusting.close()


def test_memory_url_builds_memory_store() -> None:
    """The default settings give the single-process MemoryStore."""
    assert isinstance(create_store(StoreSettings(), environ={}), MemoryStore)


def test_redis_url_builds_redis_store_without_connecting() -> None:
    """Building a Redis store does no I/O, so config can be checked with Redis down."""
    store = create_store(StoreSettings(url="redis://127.0.0.1:1/2"), environ={})
    assert isinstance(store, RedisStore)
    assert store.description == "standalone://127.0.0.1:1/2"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("memory://", StoreTarget(kind="memory", tls=False)),
        (
            "redis://cache.internal",
            StoreTarget(kind="standalone", tls=False, hosts=(("cache.internal", 6379),)),
        ),
        (
            "rediss://gw@cache:6380/3",
            StoreTarget(kind="standalone", tls=True, hosts=(("cache", 6380),), db=3, username="gw"),
        ),
        (
            "redis+sentinel://s1:26379,s2,[::1]:26380/mymaster/1",
            StoreTarget(
                kind="sentinel",
                tls=False,
                hosts=(("s1", 26379), ("s2", 26379), ("::1", 26380)),
                db=1,
                service_name="mymaster",
            ),
        ),
        (
            "rediss+cluster://n1:7000,n2:7001",
            StoreTarget(kind="cluster", tls=True, hosts=(("n1", 7000), ("n2", 7001))),
        ),
    ],
)
def test_store_urls_parse(url: str, expected: StoreTarget) -> None:
    """Each supported URL form parses into its topology, hosts, database and service name."""
    assert parse_store_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://x",
        "redis://",
        "redis://a,b",
        "redis://h:notaport",
        "redis://h:70000",
        "redis://h/x",
        "redis://h/0?ssl=true",
        "redis+sentinel://s1:26379",
        "redis+cluster://n1:7000/1",
        "memory://somewhere",
    ],
)
def test_bad_store_urls_are_refused(url: str) -> None:
    """Malformed or unsupported store URLs fail validation when the config is loaded."""
    with pytest.raises(ValidationError):
        StoreSettings(url=url)


def test_password_in_url_is_refused_without_echoing_it() -> None:
    """A password inside the URL is refused, and the error message does not repeat it."""
    with pytest.raises(ValueError, match="password_file") as err:
        parse_store_url("redis://user:hunter2@h:6379/0")
    assert "hunter2" not in str(err.value)


def test_key_prefix_may_not_hold_a_hash_tag() -> None:
    """A brace in the key prefix is refused: it would pin every key to one Cluster slot."""
    with pytest.raises(ValidationError):
        StoreSettings(key_prefix="{gw}:")
