"""A whole login world on loopback: broker simulator, gateway, upstream portal, registry file.

Flow tests drive it like a browser that follows redirects by hand (so every
hop is visible and URLs are sent byte for byte, as the signed Redirect binding
needs), with scenarios chosen programmatically at the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.app import build_app
from gateway.config import GatewayConfig, parse_config
from gateway.saml.keys import load_sp_keys
from gateway.saml.sp_metadata import service_catalogue_xml, sp_metadata_xml
from gateway.services import SERVICES, Services
from gateway.sessions import Session
from gateway.tokens.rotation import signing_key_pem
from gateway_dev.devkeys import rsa_keypair
from gateway_dev.simulator import Simulator
from tests.support.simulator import start_simulator
from tests.support.tokens import IdentityVerifier
from tests.support.upstream import UPSTREAM_LOG, UpstreamLog, build_upstream_app

SP_ENTITY = "urn:etoegang:DV:00000001234567890000:entities:0"
SERVICE_EH3 = "urn:etoegang:DV:00000001234567890000:services:0"
SERVICE_EH4 = "urn:etoegang:DV:00000001234567890000:services:1"
UUIDS = {
    SERVICE_EH3: "6f1e1a9c-2c43-4f0e-9d38-2a8c0e9a1b11",
    SERVICE_EH4: "7f1e1a9c-2c43-4f0e-9d38-2a8c0e9a1b12",
}
ADMIN = "12345678"  # Administratiekantoor De Boekhouder B.V. in the example scenarios
CLIENT_WITH_MANDATE = "23456789"  # the `chain` scenario's employer
CLIENT_WITHOUT_MANDATE = "34567890"  # the `chain-no-mandate` scenario's employer


async def follow_redirects(
    browser: aiohttp.ClientSession, url: str, *, method: str = "GET", **kw: Any
) -> tuple[aiohttp.ClientResponse, list[str]]:
    """Request ``url`` and follow redirects by hand, byte for byte (signed Redirect URLs).

    Returns the last response (body read) and every URL visited.
    """
    hops = [url]
    resp = await browser.request(method, URL(url, encoded=True), allow_redirects=False, **kw)
    for _ in range(10):
        if resp.status not in (301, 302, 303, 307, 308):
            break
        location = resp.headers["Location"]
        if location.startswith("/"):
            location = str(resp.url.origin()) + location
        await resp.release()
        hops.append(location)
        resp = await browser.get(URL(location, encoded=True), allow_redirects=False)
    await resp.read()
    return resp, hops


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mandate(admin: str, employer: str, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "administrator_kvk": admin,
        "employer_kvk": employer,
        "employer_name": name,
        "status": "active",
        "valid_from": "2020-01-01",
        **extra,
    }


DEFAULT_MANDATES = [
    mandate(
        ADMIN,
        CLIENT_WITH_MANDATE,
        "Bakkerij Brood B.V.",
        fund_employer_number="100234",
        scopes=["declarations", "employees"],
    ),
    mandate(
        ADMIN,
        "30000002",
        "Installatiebedrijf Van Dam",
        fund_employer_number="100871",
        scopes=["declarations"],
    ),
    mandate(ADMIN, "30000003", "Metaalwerken Zuid", status="revoked"),
    mandate(ADMIN, "30000005", "Zorggroep Oost", branch="000012345678"),
]


@dataclass
class LoginWorld:
    """Handles to every real peer of a login, plus a browser-like helper."""

    directory: Path
    sim: Simulator
    gateway_url: str
    upstream_log: UpstreamLog
    app: web.Application
    config: GatewayConfig
    mandates_file: Path
    browsers: list[aiohttp.ClientSession] = field(default_factory=list)

    @property
    def services(self) -> Services:
        return self.app[SERVICES]

    def browser(self, *, secure_origin: bool = False) -> aiohttp.ClientSession:
        """A new browser: its own cookie jar (unsafe=True: cookies for 127.0.0.1).

        ``secure_origin``: treat the plain-HTTP gateway as a secure origin, so
        production cookies (``Secure``, ``__Host-``) are sent back as over HTTPS.
        """
        secure = [self.gateway_url] if secure_origin else None
        jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=secure)
        session = aiohttp.ClientSession(cookie_jar=jar)
        self.browsers.append(session)
        return session

    def url(self, path: str) -> str:
        return self.gateway_url + path

    async def follow(
        self, browser: aiohttp.ClientSession, url: str, *, method: str = "GET", **kw: Any
    ) -> tuple[aiohttp.ClientResponse, list[str]]:
        """Request ``url`` and follow redirects by hand; returns the last response and hops."""
        return await follow_redirects(browser, url, method=method, **kw)

    async def login(
        self, browser: aiohttp.ClientSession, scenario: str, next_path: str = "/"
    ) -> tuple[aiohttp.ClientResponse, list[str]]:
        """A whole login in ``scenario``; returns where the browser ended up."""
        self.sim.use_scenario(scenario)
        return await self.follow(browser, self.url(f"/_gateway/login?next={next_path}"))

    async def artifact_hop(self, browser: aiohttp.ClientSession, scenario: str) -> str:
        """Run a login up to the broker's redirect to our ACS; return that ACS URL unvisited."""
        self.sim.use_scenario(scenario)
        resp = await browser.get(self.url("/_gateway/login?next=/"), allow_redirects=False)
        sso = resp.headers["Location"]
        await resp.release()
        resp = await browser.get(URL(sso, encoded=True), allow_redirects=False)
        acs = resp.headers["Location"]
        await resp.release()
        return acs

    async def submit(
        self, browser: aiohttp.ClientSession, form: AutoPostForm, *, origin: str | None = None
    ) -> tuple[aiohttp.ClientResponse, list[str]]:
        """POST an auto-submit form as a browser would (from ``origin``), then follow redirects."""
        headers = {"Origin": origin} if origin else {}
        return await self.follow(
            browser, form.action, method="POST", data=form.fields, headers=headers
        )

    def write_mandates(self, mandates: list[dict[str, Any]]) -> None:
        """Replace the registry file atomically (write, then rename), as docs/mandates.md says."""
        tmp = self.mandates_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({"version": 1, "mandates": mandates}))
        tmp.replace(self.mandates_file)

    def session_cookie(self, browser: aiohttp.ClientSession) -> str | None:
        """The gateway session cookie value this browser holds, if any."""
        name = self.config.sessions.effective_cookie_name(self.config.sessions.cookie_name)
        return next((c.value for c in browser.cookie_jar if c.key == name), None)

    async def session_of(self, browser: aiohttp.ClientSession) -> Session:
        """The live gateway session behind this browser's cookie (fails if there is none)."""
        session = await self.services.sessions.load(self.session_cookie(browser))
        assert session is not None, "the browser has no live session"
        return session

    def upstream_headers(self, index: int = -1) -> dict[str, list[str]]:
        """Headers the upstream portal received (lower-case names, every value kept)."""
        out: dict[str, list[str]] = {}
        for name, value in self.upstream_log.requests[index]["headers"]:  # type: ignore[union-attr]
            out.setdefault(name.lower(), []).append(value)
        return out

    async def verify(self, token: str, audience: str) -> dict[str, Any]:
        """Verify ``token`` the way docs/backends.md tells a backend (in a thread: it blocks)."""
        verifier = IdentityVerifier(
            jwks_url=self.url("/.well-known/jwks.json"), issuer=self.gateway_url, audience=audience
        )
        return await asyncio.to_thread(verifier.verify, token)


@dataclass(frozen=True)
class AutoPostForm:
    """The one ``<form method=post>`` of an auto-submit page (SAML POST binding)."""

    action: str
    fields: dict[str, str]
    submit_buttons: int
    """Buttons for browsers without script (inside or outside ``<noscript>``)."""
    noscript_buttons: int
    script_nonces: tuple[str | None, ...]
    """The ``nonce`` of every ``<script>`` on the page (``None`` when absent)."""


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, str]] = []
        self.fields: dict[str, str] = {}
        self.buttons = 0
        self.noscript_buttons = 0
        self.nonces: list[str | None] = []
        self._noscript = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((a.get("method", "get").lower(), a.get("action", "")))
        elif tag == "input" and a.get("type", "text").lower() == "hidden" and "name" in a:
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "button" and a.get("type", "submit").lower() == "submit":
            self.buttons += 1
            self.noscript_buttons += self._noscript > 0
        elif tag == "noscript":
            self._noscript += 1
        elif tag == "script":
            self.nonces.append(dict(attrs).get("nonce"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "noscript":
            self._noscript -= 1


def parse_auto_post(page: str) -> AutoPostForm:
    """Read an auto-submit page (HTML entities decoded); fails unless it has one POST form."""
    parser = _FormParser()
    parser.feed(page)
    parser.close()
    assert len(parser.forms) == 1, f"expected one form, found {parser.forms}"
    method, action = parser.forms[0]
    assert method == "post", f"form method is {method}"
    return AutoPostForm(
        action=action,
        fields=parser.fields,
        submit_buttons=parser.buttons,
        noscript_buttons=parser.noscript_buttons,
        script_nonces=tuple(parser.nonces),
    )


def gateway_config(
    directory: Path,
    port: int,
    upstream_url: str,
    metadata_url: str,
    mandates_file: Path,
    **overrides: Any,
) -> dict[str, Any]:
    """The gateway config dict for a login world (as ops would write it in YAML)."""
    keys = directory / "keys"
    for name in ("sp-signing", "sp-encryption"):
        pair = rsa_keypair(name)
        pair.write(keys / f"{name}.key", keys / f"{name}.crt")
    token_key = keys / "token-current.pem"
    token_key.write_bytes(signing_key_pem("ES256"))
    admin = keys / "admin.token"
    admin.write_text("registry-push-secret-0123456789")
    ref_secret = keys / "session-ref.secret"
    ref_secret.write_text("session-ref-secret-0123456789abcdef")
    base = f"http://127.0.0.1:{port}"
    config: dict[str, Any] = {
        "server": {"port": port, "config_poll_seconds": 0, "public_url": base},
        "logging": {"format": "json", "access_log": False},
        "sessions": {
            "insecure_dev_cookies": True,
            "ref_secret_file": str(ref_secret),
            "cache_seconds": 0,
        },
        "saml": {
            "entity_id": SP_ENTITY,
            "acs_url": f"{base}/_gateway/saml/acs",
            "signing": {
                "key_file": str(keys / "sp-signing.key"),
                "cert_file": str(keys / "sp-signing.crt"),
            },
            "encryption": {
                "key_file": str(keys / "sp-encryption.key"),
                "cert_file": str(keys / "sp-encryption.crt"),
            },
            "services": [
                {
                    "index": 0,
                    "service_id": SERVICE_EH3,
                    "service_uuid": UUIDS[SERVICE_EH3],
                    "instance_uuid": "1f1e1a9c-2c43-4f0e-9d38-2a8c0e9a1b11",
                    "name": "Werkgeversportaal",
                    "description": "Pensioenzaken regelen voor werkgevers",
                    "default": True,
                },
                {
                    "index": 1,
                    "service_id": SERVICE_EH4,
                    "service_uuid": UUIDS[SERVICE_EH4],
                    "instance_uuid": "2f1e1a9c-2c43-4f0e-9d38-2a8c0e9a1b12",
                    "name": "Werkgeversportaal (EH4)",
                    "description": "Gevoelige pensioenzaken",
                    "loa": "loa4",
                },
            ],
            "broker_metadata": metadata_url,
            # The simulator's default entityID is urn:etoegang:HM:<this OIN>:entities:9999.
            "broker_oin": "00000009999999999000",
            "insecure_dev_http": True,  # the simulator and fake brokers on loopback: plain http
            "verify_pool": "thread",
            "verify_workers": 2,
        },
        "mandates": {"source": {"kind": "file", "path": str(mandates_file), "check_interval": 0.2}},
        "tokens": {"issuer": base, "keys": {"current": str(token_key)}},
        "admin": {"token_file": str(admin)},
        "routes": [
            {
                "name": "employer-pages",
                "match": {"path": "/werkgevers/{kvk}{rest:(?:/.*)?}", "type": "pattern"},
                "upstream": upstream_url,
                "employer_scope": [{"location": "path", "name": "kvk"}],
            },
            {
                "name": "declarations",
                "match": {"path": "/aangifte"},
                "upstream": upstream_url,
                "employer_scope": [
                    {"location": "query", "name": "werkgever"},
                    {"location": "header", "name": "X-Werkgever"},
                    {"location": "form", "name": "werkgever"},
                ],
                "required_scope": "declarations",
            },
            {
                "name": "fund-pages",
                "match": {"path": "/fondsen/{nummer}/{rest:.*}", "type": "pattern"},
                "upstream": upstream_url,
                "employer_scope": [
                    {"location": "path", "name": "nummer", "identifier": "fund_number"}
                ],
            },
            {
                "name": "forms",
                "match": {"path": "/formulieren"},
                "upstream": upstream_url,
                "employer_scope": [{"location": "form", "name": "werkgever"}],
            },
            {
                "name": "sensitive",
                "match": {"path": "/gevoelig"},
                "upstream": upstream_url,
                "min_loa": "loa4",
            },
            {
                "name": "api",
                "match": {"path": "/api"},
                "upstream": upstream_url,
                "token_transport": "bearer",
                "audience": "portal-api",
            },
            {
                "name": "public",
                "match": {"path": "/openbaar"},
                "upstream": upstream_url,
                "policy": "public",
            },
            {"name": "portal", "match": {"path": "/"}, "upstream": upstream_url},
        ],
    }
    for section, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **value}
        else:
            config[section] = value
    return config


@contextlib.asynccontextmanager
async def login_world(
    directory: Path,
    *,
    mandates: list[dict[str, Any]] | None = None,
    simulator: dict[str, Any] | None = None,
    mandate_settings: dict[str, Any] | None = None,
    clock: Callable[[], dt.datetime] | None = None,
    **overrides: Any,
) -> AsyncIterator[LoginWorld]:
    """Start simulator, upstream and gateway on free loopback ports; stop them after.

    ``mandates`` is the registry file's content; ``mandate_settings`` is merged
    into the config's ``mandates`` section (the keyword ``mandates`` is taken).
    A file ``source`` there without a ``path`` gets the world's registry file.
    ``clock``: the gateway's session and mandate time (a ``FakeClock.now``).
    """
    if mandate_settings is not None:
        section = dict(mandate_settings)
        source = section.get("source")
        if isinstance(source, dict) and source.get("kind", "file") == "file":
            section["source"] = {"path": str(directory / "mandates.yaml"), **source}
        overrides["mandates"] = section
    directory.mkdir(parents=True, exist_ok=True)
    mandates_file = directory / "mandates.yaml"
    mandates_file.write_text(
        yaml.safe_dump(
            {"version": 1, "mandates": mandates if mandates is not None else DEFAULT_MANDATES}
        )
    )
    upstream = TestServer(build_upstream_app())
    await upstream.start_server()
    port = free_port()
    try:
        async with start_simulator(**(simulator or {})) as sim:
            data = gateway_config(
                directory,
                port,
                str(upstream.make_url("/")).rstrip("/"),
                sim.metadata_url,
                mandates_file,
                **overrides,
            )
            config = parse_config(yaml.safe_dump(data), file="<login-world>", environ={})
            assert config.saml is not None
            keys = load_sp_keys(config.saml)
            sim.set_sp_metadata(sp_metadata_xml(config.saml, keys))
            # As a real broker: ServiceUUIDs, requested attributes from our catalogue.
            sim.set_service_catalogue(service_catalogue_xml(config.saml, keys))
            app = build_app(config, configure_logs=False, clock=clock)
            server = TestServer(app, host="127.0.0.1", port=port)
            await server.start_server()
            world = LoginWorld(
                directory=directory,
                sim=sim,
                gateway_url=f"http://127.0.0.1:{port}",
                upstream_log=upstream.app[UPSTREAM_LOG],
                app=app,
                config=config,
                mandates_file=mandates_file,
            )
            try:
                yield world
            finally:
                for browser in world.browsers:
                    await browser.close()
                await server.close()
    finally:
        await upstream.close()


@contextlib.asynccontextmanager
async def replica(world: LoginWorld) -> AsyncIterator[LoginWorld]:
    """A second gateway process-equivalent: ``build_app`` with the same config on another port.

    With a shared store (Redis) this is a second replica behind one public URL; the
    returned world shares the simulator, upstream and registry file with ``world``.
    """
    port = free_port()
    app = build_app(world.config, configure_logs=False)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    other = LoginWorld(
        directory=world.directory,
        sim=world.sim,
        gateway_url=f"http://127.0.0.1:{port}",
        upstream_log=world.upstream_log,
        app=app,
        config=world.config,
        mandates_file=world.mandates_file,
    )
    try:
        yield other
    finally:
        for browser in other.browsers:
            await browser.close()
        await server.close()


async def login_by_form(
    browser: aiohttp.ClientSession, start_url: str, scenario: str
) -> tuple[aiohttp.ClientResponse, str]:
    """Open ``start_url``, pick ``scenario`` on the simulator's login page as a person would.

    Follows every redirect by hand (byte for byte) to the final page; returns
    that response and its text.
    """
    import html
    import re

    resp, _ = await follow_redirects(browser, start_url)
    page = await resp.text()
    assert "Kies hoe u inlogt" in page, page[:2000]
    action = re.search(r'<form method="post" action="([^"]+)"', page)
    token = re.search(r'name="login" value="([^"]+)"', page)
    assert action is not None and token is not None
    form = {"login": html.unescape(token[1]), "scenario": scenario, "action": "login"}
    target = str(resp.url.join(URL(html.unescape(action[1]))))
    post = await browser.post(target, data=form, allow_redirects=False)
    assert post.status in (302, 303), await post.text()
    location = post.headers["Location"]
    await post.release()
    final, _ = await follow_redirects(browser, location)
    return final, await final.text()
