"""The gateway as ops run it: one ``gateway serve`` process on Redis, with login configured.

:class:`GatewayInstance` is the reusable part (a target that puts something in
front of the gateway, such as nginx with forward-auth, starts one too): it
writes a production-like configuration (keys generated here, the broker's
metadata from the simulator, mandates from a file, sessions on a real
``redis-server``, JSON access log on, the default session cache and
verification pool unless told otherwise), starts the broker simulator on
the load side and the gateway on the server core, and makes sessions and
logins for the rows:

* sessions come from the gateway's own :class:`~gateway.sessions.SessionManager`
  writing to the same Redis (a real login per session would cost minutes for
  10,000; the login itself has its own rows);
* logins run through the simulator for real: the gateway's login start, the
  simulator's login page and scenario choice, its redirect with an artifact.
  Only the last step, the browser arriving at the ACS with its artifact (the
  gateway resolves it over SOAP, verifies, decrypts, looks up mandates and
  creates the session), is measured.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml
from yarl import URL

from bench.harness import OneShot, fetch, free_port, wait_http
from bench.targets import PAGE_MARKER, PAGE_PATH, Env, Row, Target

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "12345678"
"""The administrator every bench session belongs to (the example scenarios' office)."""
EMPLOYERS = [f"3{i:07d}" for i in range(25)]
"""Employers each bench session may act for; ``PAGE_PATH`` names one of them."""
PUBLIC_PATH = "/openbaar/overzicht?periode=2024-12"


def _touch_cycle() -> float:
    """Seconds the 10,000-session rows measure at least: longer than the session
    ``touch_interval`` and cache time (the defaults), so every session's ``last_seen``
    write and store check falls inside the window once: the steady rate."""
    from gateway.sessions.settings import SessionSettings

    defaults = SessionSettings()
    return max(defaults.touch_interval.total_seconds(), defaults.cache_seconds) + 4


TOUCH_CYCLE = _touch_cycle()
"""A route with ``policy: public`` on the same gateway and upstream page."""


def _mandates() -> list[dict[str, Any]]:
    from tests.support.login_world import DEFAULT_MANDATES, mandate

    own = [mandate(ADMIN, kvk, f"Werkgever {kvk}") for kvk in EMPLOYERS]
    return [*DEFAULT_MANDATES, *own]


@dataclass
class GatewayInstance:
    """One gateway process with its simulator, configured for the bench; see the module doc."""

    name: str
    config_overrides: dict[str, Any] = field(default_factory=dict)
    """Sections merged into the configuration (as ``gateway_config`` merges them)."""
    base_url: str = ""
    pid: int = 0
    config_path: Path | None = None
    workers: int = 1
    """``server.workers``; more than one runs unpinned, on every core (the whole-box rows)."""
    _cookie_lines: list[str] = field(default_factory=list)

    def start(self, env: Env) -> None:
        from gateway.config import parse_config
        from gateway.saml.keys import load_sp_keys
        from gateway.saml.sp_metadata import sp_metadata_xml
        from tests.support.login_world import UUIDS, gateway_config

        folder = env.folder(self.name)
        port, sim_port = free_port(), free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        sim_url = f"http://127.0.0.1:{sim_port}"
        mandates = folder / "mandates.yaml"
        mandates.write_text(yaml.safe_dump({"version": 1, "mandates": _mandates()}))
        data = gateway_config(
            folder,
            port,
            env.upstream_url,
            f"{sim_url}/saml/metadata",
            mandates,
            store={"url": env.redis_url},
            logging={"format": "json", "access_log": True},
            **self.config_overrides,
        )
        # The production defaults, not the test world's shortcuts: the session
        # cache, the verification pool (processes) and the registry file check.
        data["sessions"].pop("cache_seconds", None)
        if env.session_cache is not None:
            data["sessions"]["cache_seconds"] = env.session_cache
        # Except the mandate re-check (a registry lookup the alternatives do not do
        # at all): in a run of minutes it would fall on all 10,000 sessions at once
        # instead of spread over a minute as in steady traffic, so it is moved out
        # of the run's reach.
        data["sessions"]["mandate_recheck_interval"] = 3600
        data["sessions"]["mandate_max_staleness"] = 3600
        # And the login-start limits: every bench login comes from 127.0.0.1, as
        # fast as it can; the rows measure the login path, not the throttle.
        data["sessions"]["login_limits"] = {
            "per_address_burst": 100_000,
            "per_address_per_minute": 1_000_000,
            "total_burst": 1_000_000,
            "total_per_second": 100_000,
        }
        data["saml"].pop("verify_pool", None)
        data["server"]["workers"] = self.workers
        data["mandates"]["source"].pop("check_interval", None)
        data["routes"] = [
            r for r in data["routes"] if r["name"] in ("employer-pages", "public", "portal")
        ]
        self.config_path = folder / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(data))
        config = parse_config(self.config_path.read_text(), file=str(self.config_path), environ={})
        assert config.saml is not None
        sp_md = folder / "sp-metadata.xml"
        sp_md.write_bytes(sp_metadata_xml(config.saml, load_sp_keys(config.saml)))
        sim_config = folder / "simulator.yaml"
        sim_config.write_text(
            yaml.safe_dump(
                {
                    "base_url": sim_url,
                    "sp_metadata": str(sp_md),
                    "scenarios_file": str(ROOT / "config" / "scenarios.example.yaml"),
                    "service_uuids": UUIDS,
                    "artifact_lifetime_seconds": 600,
                }
            )
        )
        # The broker is not the server under test: it runs on the load side.
        sim_log = folder / "simulator.log"
        sim = env.processes.start(
            [
                sys.executable,
                "-m",
                "gateway",
                "simulator",
                "--config",
                str(sim_config),
                "--port",
                str(sim_port),
            ],
            log=sim_log,
        )
        wait_http(f"{sim_url}/saml/metadata", proc=sim, log=sim_log)
        log = folder / "gateway.log"
        cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path)]
        proc = env.processes.start(env.server_cmd(cmd) if self.workers == 1 else cmd, log=log)
        wait_http(f"{self.base_url}/_gateway/healthz", proc=proc, log=log)
        self.pid = proc.pid

    # -- sessions ---------------------------------------------------------------

    def sessions(self, env: Env, count: int) -> list[str]:
        """``count`` sessions in Redis, made by the gateway's SessionManager; Cookie values."""
        if len(self._cookie_lines) < count:
            self._cookie_lines += asyncio.run(
                self._create_sessions(env, count - len(self._cookie_lines))
            )
        cookies = self._cookie_lines[:count]
        status, _, body = fetch(self.base_url + PAGE_PATH, {"Cookie": cookies[0]})
        if status != 200 or PAGE_MARKER not in body:
            raise RuntimeError(f"{self.name}: a bench session was refused: {status} {body[:300]!r}")
        return cookies

    async def _create_sessions(self, env: Env, count: int) -> list[str]:
        from gateway.config import parse_config
        from gateway.identity import Employer, Identity, Loa
        from gateway.sessions import SessionManager
        from gateway.sessions.cookies import session_cookie_name
        from gateway.store.factory import create_store
        from tests.support.login_world import SERVICE_EH3

        assert self.config_path is not None
        config = parse_config(self.config_path.read_text(), file=str(self.config_path), environ={})
        store = create_store(config.store)
        manager = SessionManager(
            store, config.sessions, ref_secret=config.sessions.load_ref_secret()
        )
        allowed = [Employer(kvk=kvk, name=f"Werkgever {kvk}") for kvk in EMPLOYERS]
        name = session_cookie_name(config.sessions)
        offset = len(self._cookie_lines)

        async def one(i: int) -> str:
            identity = Identity(
                acting_subject=f"bench-pseudonym-{offset + i}",
                legal_subject_kvk=ADMIN,
                loa=Loa.EH3,
                service_id=SERVICE_EH3,
                login_time=dt.datetime.now(dt.UTC),
                legal_subject_name="Administratiekantoor De Boekhouder B.V.",
            )
            session = await manager.create(identity, allowed)
            return f"lang=nl; {name}={session.id}"

        out: list[str] = []
        try:
            # Batches no larger than the store's connection pool.
            for start in range(0, count, 16):
                batch = range(start, min(count, start + 16))
                out += await asyncio.gather(*(one(i) for i in batch))
        finally:
            await manager.aclose()
            await store.close()
        return out

    def loop_lag(self) -> dict[float, float]:
        """``gateway_event_loop_lag_seconds`` from the gateway's metrics endpoint."""
        status, _, body = fetch(self.base_url + "/_gateway/metrics")
        if status != 200:
            raise RuntimeError(f"{self.name}: metrics answered {status}")
        buckets: dict[float, float] = {}
        for m in re.finditer(
            rb'^gateway_event_loop_lag_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)$', body, re.M
        ):
            buckets[float(m.group(1))] = float(m.group(2))
        return buckets

    # -- logins -----------------------------------------------------------------

    def login_start_url(self) -> str:
        return f"{self.base_url}/_gateway/login?next={quote(PAGE_PATH, safe='')}"

    def logins(self, env: Env, count: int) -> list[OneShot]:
        """``count`` logins taken through the simulator up to the ACS, not yet delivered."""
        return asyncio.run(self._mint(count))

    async def _mint(self, count: int) -> list[OneShot]:
        sem = asyncio.Semaphore(8)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:

            async def one() -> OneShot:
                async with sem:
                    return await self._mint_one(client)

            return list(await asyncio.gather(*(one() for _ in range(count))))

    async def _mint_one(self, client: aiohttp.ClientSession) -> OneShot:
        async with client.get(self.login_start_url(), allow_redirects=False) as resp:
            sso = resp.headers["Location"]
            prelogin = "; ".join(c.split(";", 1)[0] for c in resp.headers.getall("Set-Cookie", []))
        async with client.get(URL(sso, encoded=True), allow_redirects=False) as resp:
            page = await resp.text()
        token = re.search(r'name="login" value="([^"]+)"', page)
        if token is None:
            raise RuntimeError(f"{self.name}: no simulator login page: {page[:300]}")
        login_url = sso.split("?", 1)[0].rsplit("/saml/", 1)[0] + "/saml/login"
        async with client.post(
            login_url,
            data={"login": token.group(1), "scenario": "chain"},
            allow_redirects=False,
        ) as resp:
            acs = resp.headers["Location"]
        return OneShot("GET", acs, {"Cookie": prelogin}, expect=frozenset({303}))


@dataclass
class Gateway(Target):
    """The gateway alone: public route, authenticated route, login start and completion."""

    instance: GatewayInstance | None = None
    workers: int = 1

    def start(self, env: Env) -> None:
        self.instance = GatewayInstance(self.name, workers=self.workers)
        self.instance.start(env)
        self.base_url = self.instance.base_url
        self._pids = [self.instance.pid]

    def page_url(self) -> str:
        return self.base_url + PUBLIC_PATH

    def auth_url(self) -> str:
        return self.base_url + PAGE_PATH

    def sessions(self, env: Env, count: int) -> list[str]:
        assert self.instance is not None
        return self.instance.sessions(env, count)

    def login_start_url(self) -> str:
        assert self.instance is not None
        return self.instance.login_start_url()

    def logins(self, env: Env, count: int) -> list[OneShot]:
        assert self.instance is not None
        return self.instance.logins(env, count)

    def loop_lag(self) -> dict[float, float]:
        assert self.instance is not None
        return self.instance.loop_lag()


def targets() -> list[Target]:
    bare = ("bare", "bare-uvloop")
    return [
        Gateway(
            name="gateway",
            ours=True,
            rows=(
                Row("gw-public", "gateway, public route", "gateway", "page", compare_with=bare),
                Row(
                    "gw-auth-100",
                    "gateway, authenticated, 100 sessions",
                    "gateway",
                    "auth",
                    sessions=100,
                    compare_with=("mellon-auth", *bare),
                ),
                Row(
                    "gw-auth-10k",
                    "gateway, authenticated, 10,000 sessions",
                    "gateway",
                    "auth",
                    sessions=10_000,
                    compare_with=("mellon-auth", *bare),
                    min_seconds=TOUCH_CYCLE,
                ),
                Row(
                    "gw-login-start",
                    "gateway: start of login",
                    "gateway",
                    "login_start",
                    compare_with=("mellon-login-start",),
                ),
                Row(
                    "gw-login",
                    "gateway: login (artifact resolve + verify + decrypt)",
                    "gateway",
                    "login",
                    compare_with=("mellon-login",),
                ),
            ),
        ),
        Gateway(
            name="gateway-box",
            ours=True,
            workers=2,
            rows=(
                Row(
                    "box-gw-auth-10k",
                    "whole box: gateway (workers: 2), authenticated, 10,000 sessions",
                    "gateway-box",
                    "auth",
                    sessions=10_000,
                    compare_with=("box-mellon-auth",),
                    min_seconds=TOUCH_CYCLE,
                ),
            ),
        ),
    ]
