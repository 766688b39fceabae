"""Three real gateway processes sharing one Redis, behind a round-robin splitter.

The shape of a production deployment, on loopback: ``python -m gateway serve``
replicas (same SP keys, token key, admin token and session-ref secret; each
its own port), one ``redis-server``, the broker simulator and an upstream
(in-process), and :class:`tests.support.splitter.Splitter` as the load
balancer that health-checks ``/_gateway/readyz``. ``public_url`` and the ACS
URL are the splitter's address, as they would be the load balancer's.

Each replica's config sets ``X-Replica: r<i>`` on the portal route, so the
upstream's echo tells which replica served a request.
"""

from __future__ import annotations

import contextlib
import copy
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.config import GatewayConfig, parse_config
from gateway.saml.keys import load_sp_keys
from gateway.saml.sp_metadata import sp_metadata_xml
from gateway.sessions.cookies import session_cookie_name
from gateway_dev.simulator import Simulator
from tests.support.login_world import (
    DEFAULT_MANDATES,
    UUIDS,
    follow_redirects,
    gateway_config,
)
from tests.support.processes import GatewayProcess, free_port
from tests.support.redis import RedisServer
from tests.support.simulator import start_simulator
from tests.support.splitter import Splitter
from tests.support.upstream import build_upstream_app

REPLICA_HEADER = "X-Replica"


@dataclass
class Replica:
    """One gateway process slot: a fixed port and config file; the process may be restarted."""

    index: int
    port: int
    config_path: Path
    process: GatewayProcess | None = None
    past_output: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"r{self.index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """Everything this slot's processes printed, the current one last."""
        current = self.process.output() if self.process is not None else ""
        return "".join(self.past_output) + current

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines of this slot with ``"event": name``."""
        found = []
        for line in self.output().splitlines():
            if line.startswith("{") and f'"{name}"' in line:
                entry = json.loads(line)
                if entry.get("event") == name:
                    found.append(entry)
        return found


@dataclass
class ReplicaWorld:
    directory: Path
    redis: RedisServer
    sim: Simulator
    splitter: Splitter
    replicas: list[Replica]
    config: GatewayConfig
    mandates_file: Path
    browsers: list[aiohttp.ClientSession] = field(default_factory=list)

    @property
    def public_url(self) -> str:
        return self.splitter.url

    def url(self, path: str) -> str:
        """``path`` through the splitter (the load balancer)."""
        return self.splitter.url + path

    def on(self, index: int, url_or_path: str) -> str:
        """The same path (and query, byte for byte) sent to replica ``index`` directly."""
        if url_or_path.startswith("/"):
            return self.replicas[index].url + url_or_path
        if not url_or_path.startswith(self.public_url + "/"):
            raise ValueError(f"not a gateway URL: {url_or_path}")
        return self.replicas[index].url + url_or_path[len(self.public_url) :]

    @property
    def admin_token(self) -> str:
        assert self.config.admin is not None and self.config.admin.token_file is not None
        return self.config.admin.token_file.read_text().strip()

    def browser(self) -> aiohttp.ClientSession:
        """A new browser with its own cookie jar (cookies for 127.0.0.1, any port)."""
        session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.browsers.append(session)
        return session

    def session_cookie(self, browser: aiohttp.ClientSession) -> str:
        """The ``Cookie`` header value that carries this browser's gateway session."""
        name = session_cookie_name(self.config.sessions)
        cookie = next(c for c in browser.cookie_jar if c.key == name)
        return f"{name}={cookie.value}"

    async def follow(
        self, browser: aiohttp.ClientSession, url: str, *, method: str = "GET", **kw: Any
    ) -> tuple[aiohttp.ClientResponse, list[str]]:
        """Request ``url`` and follow redirects by hand; returns the last response and hops."""
        return await follow_redirects(browser, url, method=method, **kw)

    async def start_login(
        self, browser: aiohttp.ClientSession, scenario: str, *, on: int, next_path: str = "/"
    ) -> str:
        """Start a login at replica ``on`` and run it through the broker; return the ACS URL."""
        self.sim.use_scenario(scenario)
        url = self.on(on, f"/_gateway/login?next={next_path}")
        async with browser.get(url, allow_redirects=False) as resp:
            assert resp.status in (302, 303), resp.status
            sso = resp.headers["Location"]
        async with browser.get(URL(sso, encoded=True), allow_redirects=False) as resp:
            assert resp.status in (302, 303), resp.status
            acs = resp.headers["Location"]
        assert acs.startswith(self.public_url + "/_gateway/saml/acs?"), acs
        return acs

    async def login(self, browser: aiohttp.ClientSession, scenario: str, next_path: str) -> None:
        """A whole login through the splitter, ending on ``next_path``."""
        self.sim.use_scenario(scenario)
        resp, hops = await self.follow(browser, self.url(f"/_gateway/login?next={next_path}"))
        assert resp.status == 200, (resp.status, hops)
        assert hops[-1] == self.url(next_path), hops

    def write_mandates(self, mandates: list[dict[str, Any]]) -> None:
        self.mandates_file.write_text(yaml.safe_dump({"version": 1, "mandates": mandates}))

    # -- processes ---------------------------------------------------------------------

    def launch(self, index: int) -> None:
        replica = self.replicas[index]
        assert replica.process is None, "stop it first"
        replica.process = GatewayProcess(["serve", "--config", str(replica.config_path)])

    async def wait_ready(self, index: int, timeout: float = 90) -> None:
        """Until the replica's own readiness says 200 and the splitter has seen it too."""
        replica = self.replicas[index]
        assert replica.process is not None
        await replica.process.wait_http(replica.url + "/_gateway/readyz", timeout=timeout)
        await self.splitter.wait_ready(index, timeout=timeout)

    async def stop(self, index: int, sig: signal.Signals = signal.SIGTERM) -> int:
        """Signal the replica and wait for it to exit; returns its exit code."""
        replica = self.replicas[index]
        assert replica.process is not None
        replica.process.signal(sig)
        code = await replica.process.wait_exit()
        replica.past_output.append(replica.process.output())
        replica.process.stop()
        replica.process = None
        return code


@contextlib.asynccontextmanager
async def replica_world(
    directory: Path,
    redis: RedisServer,
    *,
    count: int = 3,
    drain_delay_seconds: float = 0.5,
    health_interval: float = 0.1,
    workers: int = 1,
    overrides: dict[str, Any] | None = None,
    **sections: Any,
) -> AsyncIterator[ReplicaWorld]:
    """Start ``count`` gateway processes behind a splitter; stop everything afterwards.

    ``workers`` per process. ``overrides`` and ``sections``: config sections merged
    into every replica's file (not ``store`` or ``server``, which the world sets).
    """
    directory.mkdir(parents=True, exist_ok=True)
    mandates_file = directory / "mandates.yaml"
    mandates_file.write_text(yaml.safe_dump({"version": 1, "mandates": DEFAULT_MANDATES}))
    ports = [free_port() for _ in range(count)]
    upstream = TestServer(build_upstream_app())
    await upstream.start_server()
    world: ReplicaWorld | None = None
    try:
        async with (
            start_simulator(service_uuids=UUIDS) as sim,
            Splitter(
                [("127.0.0.1", p) for p in ports],
                health_path="/_gateway/readyz",
                health_interval=health_interval,
            ) as splitter,
        ):
            data = gateway_config(
                directory,
                splitter.port,  # public_url, ACS URL and token issuer: the load balancer
                str(upstream.make_url("/")).rstrip("/"),
                sim.metadata_url,
                mandates_file,
                store={"url": redis.url},
                server={
                    "drain_delay_seconds": drain_delay_seconds,
                    "shutdown_grace_seconds": 10,
                    "workers": workers,
                },
                **(overrides or {}),
                **sections,
            )
            config = parse_config(yaml.safe_dump(data), file="<replicas>", environ={})
            assert config.saml is not None
            sim.set_sp_metadata(sp_metadata_xml(config.saml, load_sp_keys(config.saml)))
            replicas = []
            for index, port in enumerate(ports):
                own = copy.deepcopy(data)
                own["server"]["port"] = port
                portal = next(r for r in own["routes"] if r["name"] == "portal")
                portal["request_headers"] = {"set": {REPLICA_HEADER: f"r{index}"}}
                path = directory / f"replica-{index}.yaml"
                path.write_text(yaml.safe_dump(own))
                replicas.append(Replica(index, port, path))
            world = ReplicaWorld(
                directory=directory,
                redis=redis,
                sim=sim,
                splitter=splitter,
                replicas=replicas,
                config=config,
                mandates_file=mandates_file,
            )
            try:
                for index in range(count):
                    world.launch(index)
                for index in range(count):
                    await world.wait_ready(index)
                yield world
            finally:
                for browser in world.browsers:
                    await browser.close()
                for replica in world.replicas:
                    if replica.process is not None:
                        replica.process.stop()
    finally:
        await upstream.close()
