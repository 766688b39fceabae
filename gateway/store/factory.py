"""Store configuration and the one place that turns it into a ``Store``.

URLs (``StoreSettings.url``)::

    memory://                                            one process only (default; demo)
    redis://[user@]host[:6379][/db]                      standalone
    rediss://[user@]host[:6380][/db]                     standalone over TLS
    redis+sentinel://[user@]h1:26379,h2:26379/service[/db]   Sentinel (service = master name)
    rediss+sentinel://...                                Sentinel, data nodes over TLS
    redis+cluster://[user@]h1:7000,h2:7001               Cluster (seed nodes; db is always 0)
    rediss+cluster://...                                 Cluster over TLS

Durability and failover (``replica_acks``, ``replica_ack_timeout``,
``unreplicated_writes``, ``failover_wait``, ``retries``) are explained in
:mod:`gateway.store.failover`, :mod:`gateway.store.topology` and
``docs/state.md``.

Passwords are never part of the URL (a URL ends up in config files, process
listings and log lines): a URL with a password is refused. The password comes
from ``password_file`` (a mounted secret; trailing newline ignored) or else from
the environment variable named by ``password_env``. Sentinels themselves may
need their own password (``sentinel_password_file``); with Sentinel the
username/password above authenticate to the data nodes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.store.base import Store
from gateway.store.cluster import ClusterTopology
from gateway.store.failover import UnreplicatedMode
from gateway.store.memory import MemoryStore
from gateway.store.redis_store import Durability, RedisStore
from gateway.store.topology import (
    Address,
    SentinelTopology,
    StandaloneTopology,
    Topology,
)

Kind = Literal["memory", "standalone", "sentinel", "cluster"]

_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "memory": ("memory", False),
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_DEFAULT_PORT = {"standalone": 6379, "sentinel": 26379, "cluster": 6379}


class StoreSettings(BaseModel):
    """Where shared state lives. The default (``memory://``) is for ONE process only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = "memory://"
    """Store URL (see the module docstring). Never contains a password."""
    key_prefix: str = Field(default="gw:", max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$")
    """Put in front of every key and channel, so deployments can share one Redis."""
    password_file: Path | None = None
    """File holding the Redis password (data nodes). Preferred over ``password_env``."""
    password_env: str | None = "GATEWAY_REDIS_PASSWORD"  # noqa: S105 (a variable name, not a secret)
    """Environment variable holding the Redis password when no file is configured."""
    sentinel_password_file: Path | None = None
    """File holding the password of the Sentinel processes, if they require one."""
    socket_timeout: float = Field(default=0.5, gt=0, le=30)
    """Seconds to wait for a reply; short, so an outage fails requests fast (503)."""
    connect_timeout: float = Field(default=0.5, gt=0, le=30)
    """Seconds to wait for a TCP/TLS connection."""
    retries: int = Field(default=1, ge=0, le=5)
    """Times an operation is sent again after a failure, where that is safe: reads, ``set``
    and ``delete`` after any failure; ``add`` and ``take`` only when the first attempt
    certainly did not take effect (docs/state.md, "Failover")."""
    replica_acks: int | Literal["auto"] = "auto"
    """After every write, ``WAIT`` until this many replicas have it. ``auto``: 1 with
    Sentinel or Cluster, 0 (no ``WAIT``) for a single server."""
    replica_ack_timeout: float = Field(default=0.1, gt=0, le=5)
    """Seconds a write waits for the replica acknowledgements; shorter than ``socket_timeout``."""
    unreplicated_writes: UnreplicatedMode = "accept_on_primary"
    """A write no replica acknowledged in time: ``accept_on_primary`` keeps it if the node
    that ran it is confirmed as the primary with no failover under way (else 503);
    ``fail`` always answers 503 (strict: no write without a replica copy)."""
    failover_wait: float = Field(default=2.0, ge=0, le=30)
    """Sentinel: seconds an operation that hit a gone or read-only primary waits for
    the sentinels to name a new one before it fails (503)."""
    max_connections: int = Field(default=64, ge=1)
    """Connection pool size per process (per node on Cluster)."""
    health_check_interval: float = Field(default=15.0, ge=0)
    """Idle connections (and subscriptions) are PINGed after this many seconds."""
    subscribe_backoff_max: float = Field(default=5.0, gt=0)
    """Longest wait between reconnect attempts of a broken subscription."""
    tls_ca_file: Path | None = None
    """CA bundle to verify the server with ``rediss``; the system store if unset."""
    tls_cert_file: Path | None = None
    """Client certificate for mutual TLS (optional)."""
    tls_key_file: Path | None = None
    """Key of the client certificate."""
    tls_check_hostname: bool = True
    """Verify the server name in its certificate. Only turn off for IP-addressed test setups."""
    memory_sweep_interval: float = Field(default=30.0, gt=0)
    """``memory://`` only: how often expired keys are swept."""

    @field_validator("url")
    @classmethod
    def _url_parses(cls, value: str) -> str:
        parse_store_url(value)
        return value

    @field_validator("replica_acks")
    @classmethod
    def _acks_in_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= 5:
            raise ValueError("replica_acks must be auto or a number from 0 to 5")
        return value

    @model_validator(mode="after")
    def _ack_timeout_fits(self) -> StoreSettings:
        if self.replica_ack_timeout >= self.socket_timeout:
            # WAIT's reply comes after replica_ack_timeout; a shorter socket timeout
            # would turn every unacknowledged write into a broken connection.
            raise ValueError(
                f"replica_ack_timeout ({self.replica_ack_timeout}) must be shorter than "
                f"socket_timeout ({self.socket_timeout})"
            )
        return self

    def durability(self, kind: Kind) -> Durability:
        """The ``WAIT`` policy for a deployment of ``kind``."""
        acks = self.replica_acks
        if acks == "auto":
            acks = 1 if kind in ("sentinel", "cluster") else 0
        return Durability(
            replica_acks=acks,
            timeout=self.replica_ack_timeout,
            unreplicated=self.unreplicated_writes,
        )


@dataclass(frozen=True)
class StoreTarget:
    """A parsed store URL."""

    kind: Kind
    tls: bool
    hosts: tuple[tuple[str, int], ...] = ()
    db: int = 0
    service_name: str | None = None
    username: str | None = None

    def describe(self) -> str:
        """A log-safe description (no credentials)."""
        if self.kind == "memory":
            return "memory"
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts)
        svc = f"/{self.service_name}" if self.service_name else ""
        return f"{self.kind}{'+tls' if self.tls else ''}://{hosts}{svc}/{self.db}"


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError("a host is missing")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError("port must be a number") from None
    if not 0 < port < 65536:
        raise ValueError("port out of range")
    return host, port


def parse_store_url(url: str) -> StoreTarget:
    """Parse a store URL; ``ValueError`` messages never repeat credentials."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ValueError(f"unsupported store URL scheme; use one of: {', '.join(_SCHEMES)}")
    kind, tls = _SCHEMES[scheme.lower()]
    if kind == "memory":
        if rest.strip("/"):
            raise ValueError("memory:// takes no host or path")
        return StoreTarget(kind="memory", tls=False)
    if "?" in rest or "#" in rest:
        raise ValueError("store URL takes no query or fragment; use the store settings")
    netloc, _, path = rest.partition("/")
    username: str | None = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        if ":" in userinfo:
            raise ValueError(
                "the store URL must not contain a password; use password_file or password_env"
            )
        username = unquote(userinfo) or None
    if not netloc:
        raise ValueError("a host is missing")
    hosts = tuple(_host_port(h, _DEFAULT_PORT[kind]) for h in netloc.split(",") if h)
    if kind == "standalone" and len(hosts) != 1:
        raise ValueError("redis:// takes exactly one host; use redis+sentinel or redis+cluster")
    parts = [p for p in path.split("/") if p]
    service_name: str | None = None
    if kind == "sentinel":
        if not parts:
            raise ValueError("redis+sentinel:// needs the service (master) name: .../service[/db]")
        service_name = unquote(parts.pop(0))
    if len(parts) > 1:
        raise ValueError("unexpected path in store URL")
    db = 0
    if parts:
        if not parts[0].isdigit():
            raise ValueError("database must be a number")
        db = int(parts[0])
    if kind == "cluster" and db != 0:
        raise ValueError("Redis Cluster only has database 0")
    return StoreTarget(
        kind=kind, tls=tls, hosts=hosts, db=db, service_name=service_name, username=username
    )


def _read_secret(path: Path) -> str:
    return path.read_text(encoding="utf-8").rstrip("\r\n")


def _password(settings: StoreSettings, environ: Mapping[str, str]) -> str | None:
    if settings.password_file is not None:
        return _read_secret(settings.password_file)
    if settings.password_env:
        return environ.get(settings.password_env) or None
    return None


def _connection_kwargs(
    settings: StoreSettings, target: StoreTarget, password: str | None
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "username": target.username,
        "password": password,
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.connect_timeout,
        "health_check_interval": settings.health_check_interval,
        # The store decides about retries itself (gateway.store.failover): redis-py
        # would also repeat a GETDEL whose reply was lost.
        "retry": Retry(NoBackoff(), 0),
        "max_connections": settings.max_connections,
    }
    if target.tls:
        kwargs.update(
            ssl=True,
            ssl_cert_reqs="required",
            ssl_check_hostname=settings.tls_check_hostname,
            ssl_ca_certs=str(settings.tls_ca_file) if settings.tls_ca_file else None,
            ssl_certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
            ssl_keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
        )
    return kwargs


def create_store(settings: StoreSettings, environ: Mapping[str, str] | None = None) -> Store:
    """Build the configured store. No network I/O happens here; use ``ping`` to check it."""
    env = os.environ if environ is None else environ
    target = parse_store_url(settings.url)
    if target.kind == "memory":
        return MemoryStore(sweep_interval=settings.memory_sweep_interval)
    kwargs = _connection_kwargs(settings, target, _password(settings, env))
    topology: Topology
    if target.kind == "standalone":
        ((host, port),) = target.hosts
        topology = StandaloneTopology(Redis(host=host, port=port, db=target.db, **kwargs))
    elif target.kind == "sentinel":
        assert target.service_name is not None
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": settings.socket_timeout,
            "socket_connect_timeout": settings.connect_timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if settings.sentinel_password_file is not None:
            sentinel_kwargs["password"] = _read_secret(settings.sentinel_password_file)
        if target.tls:
            # Sentinels and data nodes share one TLS setup in this URL form.
            sentinel_kwargs.update({k: v for k, v in kwargs.items() if k.startswith("ssl")})
        sentinels = [Redis(host=h, port=p, **sentinel_kwargs) for h, p in target.hosts]
        db = target.db

        def data_client(address: Address) -> Redis:
            return Redis(host=address[0], port=address[1], db=db, **kwargs)

        topology = SentinelTopology(
            sentinels,
            target.service_name,
            data_client,
            failover_wait=settings.failover_wait,
            # Long enough for a command already running on the old primary to end.
            retire_after=2 * (settings.socket_timeout + settings.connect_timeout),
            backoff_max=settings.subscribe_backoff_max,
        )
    else:
        topology = ClusterTopology(
            RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
                require_full_coverage=True,
                **kwargs,
            )
        )
    return RedisStore(
        topology,
        key_prefix=settings.key_prefix,
        description=target.describe(),
        durability=settings.durability(target.kind),
        retries=settings.retries,
        subscribe_backoff_max=settings.subscribe_backoff_max,
    )
