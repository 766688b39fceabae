"""Real ``redis-server`` processes for tests: start on a free port, stop, restart.

Any area that needs Redis in a test uses this instead of a fake::

    from tests.support.redis import RedisServer, redis_server  # noqa: F401  (fixture)

    async def test_something(redis_server: RedisServer) -> None:
        store = RedisStore.from_url(redis_server.url)
        ...
        redis_server.stop()       # simulate an outage (same port kept)
        redis_server.start()      # Redis is back on the same port

Servers run without persistence (``--save "" --appendonly no``) in a private
temporary directory and listen on 127.0.0.1 only. ``RedisServer`` also works as
a context manager, and ``extra_args`` lets a caller start a replica
(``["--replicaof", "127.0.0.1", str(port)]``) or a cluster node
(``["--cluster-enabled", "yes"]``). ``SentinelServer`` starts a sentinel.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too; Redis needs port <= 55535."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _ping(port: int, timeout: float = 0.2, *, tls: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        if tls:
            # A TLS server may demand a client certificate; listening is ready enough.
            return b"+PONG"
        raw.sendall(b"PING\r\n")
        return raw.recv(64)


@dataclass(frozen=True)
class TlsFiles:
    """Server TLS material: certificate, key, and the CA file that verifies clients."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    auth_clients: bool = False


class RedisServer:
    """One ``redis-server`` (or sentinel) process on a fixed loopback port."""

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        sentinel: bool = False,
        config_text: str = "",
        tls: TlsFiles | None = None,
    ) -> None:
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.sentinel = sentinel
        self.config_text = config_text
        self.tls = tls
        self._dir = Path(tempfile.mkdtemp(prefix="gw-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the process (again) on the same port and wait until it answers PING."""
        if self.running:
            return
        conf = self._dir / "redis.conf"
        # A sentinel rewrites its config file, so it must be a real file it can write.
        conf.write_text(self.config_text)
        args = [
            REDIS_SERVER,
            str(conf),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self._dir),
            "--daemonize",
            "no",
            "--logfile",
            str(self._dir / "redis.log"),
        ]
        if self.tls is not None:
            args += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls.cert_file),
                "--tls-key-file",
                str(self.tls.key_file),
                "--tls-ca-cert-file",
                str(self.tls.ca_file),
                "--tls-auth-clients",
                "yes" if self.tls.auth_clients else "no",
            ]
        else:
            args += ["--port", str(self.port)]
        if self.sentinel:
            args.append("--sentinel")
        else:
            args += ["--save", "", "--appendonly", "no"]
        args += self.extra_args
        self._proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self._dir
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if _ping(self.port, tls=self.tls is not None).startswith((b"+PONG", b"-NOAUTH")):
                    return
            except OSError:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                log = (self._dir / "redis.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop the process (an outage as seen by clients); the port stays reserved for us."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """Stop abruptly with SIGKILL (a crash rather than a shutdown)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def cli(self, *args: str) -> str:
        """Run ``redis-cli`` against this server and return its output."""
        out = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port), *args],
            capture_output=True,
            check=True,
            timeout=30,
        )
        return out.stdout.decode()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


def sentinel_config(master_name: str, primary_port: int, *, quorum: int = 1) -> str:
    """A minimal sentinel config watching one primary, with fast failover for tests."""
    return (
        f"sentinel monitor {master_name} 127.0.0.1 {primary_port} {quorum}\n"
        f"sentinel down-after-milliseconds {master_name} 300\n"
        f"sentinel failover-timeout {master_name} 2000\n"
        f"sentinel parallel-syncs {master_name} 1\n"
        "sentinel resolve-hostnames no\n"
    )


def _wait(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


class SentinelSetup:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels on free ports.

    ``url`` is the store URL (every sentinel). The roles move on a failover:
    ``primary`` is always the server sentinels name now (``refresh_roles``), and
    ``replicas`` the other data servers. ``kill_primary()`` crashes the primary
    and waits for the promotion; ``manual_failover()`` runs ``SENTINEL FAILOVER``
    and waits until the sentinels name the new primary.
    """

    def __init__(
        self,
        master_name: str = "gwmaster",
        *,
        replicas: int = 1,
        sentinels: int = 1,
        quorum: int | None = None,
        data_args: Sequence[str] = (),
        sentinel_text: Callable[[int], str] | None = None,
    ) -> None:
        """``data_args`` go to every data server's command line; ``sentinel_text(port)``
        replaces the test sentinel config (``port``: the first primary's)."""
        self.master_name = master_name
        self.primary = RedisServer(extra_args=list(data_args))
        self.replicas = [
            RedisServer(extra_args=[*data_args, "--replicaof", "127.0.0.1", str(self.primary.port)])
            for _ in range(replicas)
        ]
        self.data_servers = [self.primary, *self.replicas]
        q = quorum if quorum is not None else sentinels // 2 + 1
        text = (
            sentinel_text(self.primary.port)
            if sentinel_text is not None
            else sentinel_config(master_name, self.primary.port, quorum=q)
        )
        self.sentinels = [RedisServer(sentinel=True, config_text=text) for _ in range(sentinels)]

    @property
    def replica(self) -> RedisServer:
        """The first replica (the one a single-replica setup promotes)."""
        return self.replicas[0]

    @property
    def sentinel(self) -> RedisServer:
        """The first sentinel that is running."""
        return next(s for s in self.sentinels if s.running)

    @property
    def url(self) -> str:
        hosts = ",".join(s.address for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def start(self) -> None:
        self.primary.start()
        for replica in self.replicas:
            replica.start()
            _wait(
                lambda r=replica: "master_link_status:up" in r.cli("INFO", "replication"),
                "replica to sync",
            )
        for sentinel in self.sentinels:
            sentinel.start()
        others = len(self.sentinels) - 1
        for sentinel in self.sentinels:
            _wait(
                lambda s=sentinel: all(
                    str(r.port) in s.cli("SENTINEL", "replicas", self.master_name)
                    for r in self.replicas
                ),
                "sentinel to discover the replicas",
            )
            _wait(
                lambda s=sentinel: self._master_field(s, "num-other-sentinels") == str(others),
                "sentinels to discover each other",
                timeout=30,
            )

    def _master_field(self, sentinel: RedisServer, name: str) -> str | None:
        lines = sentinel.cli("SENTINEL", "master", self.master_name).split("\n")
        fields = dict(zip(lines[0::2], lines[1::2], strict=False))
        return fields.get(name)

    def current_primary_port(self) -> int:
        out = self.sentinel.cli("SENTINEL", "get-master-addr-by-name", self.master_name)
        return int(out.split()[1])

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.data_servers if s.port == port)

    def refresh_roles(self) -> None:
        """Set ``primary``/``replicas`` from what the sentinels say now."""
        self.primary = self.server(self.current_primary_port())
        self.replicas = [s for s in self.data_servers if s is not self.primary]

    def _all_sentinels_name(self, port: int) -> bool:
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            out = sentinel.cli("SENTINEL", "get-master-addr-by-name", self.master_name)
            if out.split()[1:2] != [str(port)]:
                return False
        return True

    def _wait_promoted(self, old: RedisServer, timeout: float) -> RedisServer:
        _wait(lambda: self.current_primary_port() != old.port, "sentinel failover", timeout)
        new = self.server(self.current_primary_port())
        _wait(lambda: "role:master" in new.cli("INFO", "replication"), "promotion", timeout)
        _wait(lambda: self._all_sentinels_name(new.port), "every sentinel to agree", timeout)
        self.refresh_roles()
        return new

    def kill_primary(self, timeout: float = 30.0) -> RedisServer:
        """Crash the primary (SIGKILL) and wait until a replica is the new primary."""
        old = self.primary
        old.kill()
        return self._wait_promoted(old, timeout)

    def manual_failover(self, timeout: float = 30.0) -> RedisServer:
        """``SENTINEL FAILOVER`` (a planned switch) and wait until the new primary is named."""
        old = self.primary
        self.sentinel.cli("SENTINEL", "FAILOVER", self.master_name)
        return self._wait_promoted(old, timeout)

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Wait until every running non-primary server replicates the primary, link up."""
        for server in self.replicas:
            if not server.running:
                continue
            _wait(
                lambda s=server: (
                    "role:slave" in (info := s.cli("INFO", "replication"))
                    and f"master_port:{self.primary.port}" in info
                    and "master_link_status:up" in info
                    and "master_sync_in_progress:0" in info
                ),
                f"server {server.port} to replicate the new primary",
                timeout,
            )

    def failover(self) -> None:
        """Crash the primary and wait until the replica is the new primary."""
        self.kill_primary()

    def cleanup(self) -> None:
        for server in (*self.sentinels, *self.data_servers):
            server.cleanup()

    def __enter__(self) -> SentinelSetup:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class ClusterSetup:
    """A Redis Cluster of ``size`` primaries with ``replicas`` replicas each, on free ports."""

    def __init__(self, size: int = 3, *, replicas: int = 0) -> None:
        self.replicas_per_primary = replicas
        self.nodes = [
            RedisServer(
                free_cluster_port(),
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
            for _ in range(size * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(n.address for n in self.nodes[:2])

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        self.nodes[0].cli(
            "--cluster",
            "create",
            *(n.address for n in self.nodes),
            "--cluster-replicas",
            str(self.replicas_per_primary),
            "--cluster-yes",
        )
        for node in self.nodes:
            _wait(
                lambda node=node: "cluster_state:ok" in node.cli("CLUSTER", "INFO"),
                "cluster state ok",
                timeout=30,
            )
        if self.replicas_per_primary:
            for node in self.replicas():
                _wait(
                    lambda node=node: "master_link_status:up" in node.cli("INFO", "replication"),
                    "cluster replica to sync",
                    timeout=30,
                )

    def role(self, node: RedisServer) -> str:
        return node.cli("ROLE").split("\n")[0].strip()

    def primaries(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.running and self.role(n) == "master"]

    def replicas(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.running and self.role(n) == "slave"]

    def replica_of(self, primary: RedisServer) -> RedisServer:
        """A running replica of ``primary``."""
        for node in self.replicas():
            info = node.cli("INFO", "replication")
            if f"master_port:{primary.port}" in info:
                return node
        raise RuntimeError(f"no replica of {primary.address}")

    def manual_failover(self, primary: RedisServer, timeout: float = 30.0) -> RedisServer:
        """``CLUSTER FAILOVER`` on a replica of ``primary`` (a planned switch); returns it."""
        replica = self.replica_of(primary)
        replica.cli("CLUSTER", "FAILOVER")
        _wait(lambda: self.role(replica) == "master", "cluster manual failover", timeout)
        self.wait_ok(timeout)
        return replica

    def kill(self, primary: RedisServer, timeout: float = 30.0) -> RedisServer:
        """SIGKILL ``primary`` and wait until its replica took over its slots."""
        replica = self.replica_of(primary)
        primary.kill()
        _wait(lambda: self.role(replica) == "master", "cluster failover", timeout)
        self.wait_ok(timeout)
        return replica

    def wait_replicating(self, node: RedisServer, timeout: float = 30.0) -> None:
        """Wait until ``node`` (a former primary) replicates its successor, link up."""
        _wait(
            lambda: (
                "role:slave" in (info := node.cli("INFO", "replication"))
                and "master_link_status:up" in info
                and "master_sync_in_progress:0" in info
            ),
            f"node {node.port} to replicate",
            timeout,
        )

    def wait_ok(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            if node.running:
                _wait(
                    lambda node=node: "cluster_state:ok" in node.cli("CLUSTER", "INFO"),
                    "cluster state ok",
                    timeout,
                )

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> ClusterSetup:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh, empty redis-server on a free port for one test."""
    with RedisServer() as server:
        yield server


__all__ = [
    "REDIS_CLI",
    "REDIS_SERVER",
    "ClusterSetup",
    "RedisServer",
    "SentinelSetup",
    "TlsFiles",
    "eventually",
    "free_cluster_port",
    "free_port",
    "redis_server",
    "sentinel_config",
]


async def eventually(predicate: Callable[[], bool], *, within: float = 5.0) -> None:
    """Wait until ``predicate()`` is true, polling; fail the test after ``within`` seconds."""
    step = 0.01
    for _ in range(int(within / step)):
        if predicate():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {within} s")
