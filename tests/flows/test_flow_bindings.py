"""SAML bindings through the whole gateway: AuthnRequest by POST, SAMLart by POST,
the HTTP-POST response binding, and RelayState checks at the ACS (real HTTP on loopback).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import re
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest
from lxml import etree
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.support.wait import WebDriverWait
from structlog.testing import capture_logs

from gateway.saml.authn_request import authn_request_xml
from gateway.saml.metadata import BINDING_ARTIFACT, BINDING_POST
from gateway.saml.signature import sign_enveloped
from gateway.saml.sp_metadata import sp_metadata_xml
from gateway.saml.xml import NS
from tests.support.browser import chromium, chromium_available
from tests.support.login_world import (
    CLIENT_WITH_MANDATE,
    LoginWorld,
    login_world,
    parse_auto_post,
)

ACS_PATH = "/_gateway/saml/acs"
DEEP_LINK = f"/werkgevers/{CLIENT_WITH_MANDATE}/loonaangifte"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[LoginWorld]:
    async with login_world(tmp_path) as w:
        yield w


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _refusals(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in logs if e["event"] == "login_refused"]


def _set_cookie(resp: aiohttp.ClientResponse, name: str) -> str:
    """The raw ``Set-Cookie`` header for cookie ``name`` (attributes as the server wrote them)."""
    found = [h for h in resp.headers.getall("Set-Cookie", []) if h.startswith(name + "=")]
    assert len(found) == 1, resp.headers.getall("Set-Cookie", [])
    return found[0]


def _attributes(set_cookie: str) -> set[str]:
    return {part.strip().split("=", 1)[0].lower() for part in set_cookie.split(";")[1:]}


def _samesite(set_cookie: str) -> str:
    match = re.search(r"SameSite=(\w+)", set_cookie, re.IGNORECASE)
    assert match, set_cookie
    return match.group(1)


async def _start(world: LoginWorld, browser: aiohttp.ClientSession) -> tuple[str, str, str]:
    """Start a login (Redirect binding); return (simulator URL, request ID, RelayState)."""
    async with browser.get(
        world.url(f"/_gateway/login?next={DEEP_LINK}"), allow_redirects=False
    ) as resp:
        assert resp.status == 303
        sso = resp.headers["Location"]
    query = parse_qs(urlsplit(sso).query)
    xml = zlib.decompress(base64.b64decode(query["SAMLRequest"][0]), -15)
    return sso, etree.fromstring(xml).get("ID"), query["RelayState"][0]


# -- AuthnRequest by HTTP-POST --------------------------------------------------


async def test_authn_request_by_post_is_an_auto_submit_form_that_logs_in(
    tmp_path: Path,
) -> None:
    """With request_binding post, login answers a nonce-CSP auto-submit form that logs in."""
    async with login_world(tmp_path, saml={"request_binding": "post"}) as world:
        browser = world.browser()
        world.sim.use_scenario("chain")
        async with browser.get(
            world.url(f"/_gateway/login?next={DEEP_LINK}"), allow_redirects=False
        ) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            assert resp.headers["Cache-Control"] == "no-store"
            csp = resp.headers["Content-Security-Policy"]
            page = await resp.text()
        form = parse_auto_post(page)
        assert form.action == world.sim.sso_url
        assert set(form.fields) == {"SAMLRequest", "RelayState"}
        assert len(form.fields["RelayState"].encode()) <= 80
        request = etree.fromstring(base64.b64decode(form.fields["SAMLRequest"]))
        assert request.find("ds:Signature", NS) is not None  # enveloped RSA-SHA256
        assert request.get("ProtocolBinding") == BINDING_ARTIFACT
        assert request.get("Destination") == world.sim.sso_url

        assert len(resp.headers.getall("Content-Security-Policy")) == 1
        directives = {d.strip().split(" ", 1)[0]: d.strip() for d in csp.split(";")}
        (nonce,) = form.script_nonces
        assert nonce and directives["script-src"] == f"script-src 'nonce-{nonce}'"
        assert directives["default-src"] == "default-src 'none'"
        # Browsers apply form-action to the broker's redirects too (see the Chromium test).
        assert "form-action" not in directives
        assert form.noscript_buttons == 1  # browsers without script press a button

        resp, hops = await world.submit(browser, form, origin=world.gateway_url)
        assert resp.status == 200, await resp.text()
        assert hops[1].startswith(world.url(ACS_PATH + "?SAMLart="))
        assert hops[-1] == world.url(DEEP_LINK)
        assert (await world.session_of(browser)).identity.mode == "chain"

        async with browser.get(world.url("/_gateway/login")) as resp:
            again = parse_auto_post(await resp.text()).script_nonces[0]
        assert again != nonce  # a fresh nonce per page: one leaked nonce is useless


async def test_authn_request_by_post_logs_in_in_a_real_browser(tmp_path: Path) -> None:
    """Headless Chromium runs the nonce'd auto-submit and follows the broker's redirect home."""
    missing = chromium_available()
    if missing:
        pytest.fail(f"this test needs {missing}: run ./dev test (it installs them)")
    async with login_world(tmp_path, saml={"request_binding": "post"}) as world:
        world.sim.use_scenario("chain")  # the broker answers the POST with a 303 to our ACS
        target = world.url(DEEP_LINK)

        def drive() -> tuple[str, list[dict[str, object]]]:
            with chromium() as driver:
                driver.get(world.url(f"/_gateway/login?next={DEEP_LINK}"))
                with contextlib.suppress(TimeoutException):
                    WebDriverWait(driver, 15, poll_frequency=0.1).until(
                        lambda d: d.current_url == target
                    )
                return driver.current_url, driver.get_log("browser")

        url, console = await asyncio.to_thread(drive)
        assert url == target, console
        assert world.upstream_log.requests  # the portal served the deep link


# -- SAMLart delivered by POST --------------------------------------------------


async def test_artifact_posted_by_the_broker_logs_in_with_dev_cookies(tmp_path: Path) -> None:
    """acs_delivery post: the broker's form carries SAMLart + RelayState and the POST logs in."""
    async with login_world(tmp_path, simulator={"acs_delivery": "post"}) as world:
        browser = world.browser()
        world.sim.use_scenario("chain")
        async with browser.get(
            world.url(f"/_gateway/login?next={DEEP_LINK}"), allow_redirects=False
        ) as resp:
            assert resp.status == 303
            # Dev mode (plain HTTP): no Secure, no __Host-, so SameSite falls back to Lax.
            prelogin = _set_cookie(resp, "gw_login")
        assert "secure" not in _attributes(prelogin)
        assert {"httponly", "max-age", "path"} <= _attributes(prelogin)
        assert _samesite(prelogin) == "Lax"

        resp, _ = await world.follow(browser, resp.headers["Location"])
        assert resp.status == 200  # the simulator's auto-submit page
        form = parse_auto_post(await resp.text())
        assert form.action == world.url(ACS_PATH)
        assert set(form.fields) == {"SAMLart", "RelayState"}

        resp, hops = await world.submit(browser, form, origin=_origin(world.sim.sso_url))
        assert resp.status == 200, await resp.text()
        assert hops[-1] == world.url(DEEP_LINK)
        assert all("SAMLart" not in hop for hop in hops)  # it travelled in the body


async def test_artifact_post_carries_production_prelogin_cookie(tmp_path: Path) -> None:
    """In production the pre-login cookie is __Host-, Secure, SameSite=None and reaches the ACS."""
    async with login_world(
        tmp_path, sessions={"insecure_dev_cookies": False}, simulator={"acs_delivery": "post"}
    ) as world:
        browser = world.browser(secure_origin=True)
        world.sim.use_scenario("chain")
        async with browser.get(
            world.url(f"/_gateway/login?next={DEEP_LINK}"), allow_redirects=False
        ) as resp:
            prelogin = _set_cookie(resp, "__Host-gw_login")
        # SameSite=None: the broker returns the browser with a cross-site POST.
        assert _samesite(prelogin) == "None"
        assert {"secure", "httponly", "path"} <= _attributes(prelogin)
        assert "domain" not in _attributes(prelogin)

        resp, _ = await world.follow(browser, resp.headers["Location"])
        form = parse_auto_post(await resp.text())
        async with browser.post(
            form.action,
            data=form.fields,
            headers={"Origin": _origin(world.sim.sso_url)},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303, await resp.text()
            session = _set_cookie(resp, "__Host-gw_session")
            assert _samesite(session) == "Lax" and "secure" in _attributes(session)
            target = resp.headers["Location"]
        resp, _ = await world.follow(browser, world.url(target))
        assert resp.status == 200


async def test_posted_artifact_from_another_browser_is_refused(tmp_path: Path) -> None:
    """A SAMLart form posted by a browser without the pre-login cookie is refused."""
    async with login_world(tmp_path, simulator={"acs_delivery": "post"}) as world:
        victim = world.browser()
        world.sim.use_scenario("direct")
        resp, _ = await world.follow(victim, world.url("/_gateway/login"))
        form = parse_auto_post(await resp.text())
        with capture_logs() as logs:
            resp, _ = await world.submit(world.browser(), form)
        assert resp.status == 400
        assert [e["reason"] for e in _refusals(logs)] == ["login_expired"]
        resp, _ = await world.submit(victim, form)
        assert resp.status == 200


# -- HTTP-POST response binding -------------------------------------------------


def _register_post_acs(world: LoginWorld) -> None:
    """Give the simulator our SP metadata plus an HTTP-POST ACS (ours lists Artifact only)."""
    assert world.config.saml is not None
    root = etree.fromstring(sp_metadata_xml(world.config.saml, world.services.sp.keys))
    artifact_acs = root.find("md:SPSSODescriptor/md:AssertionConsumerService", NS)
    post_acs = etree.Element(
        etree.QName(NS["md"], "AssertionConsumerService"),
        Binding=BINDING_POST,
        Location=world.config.saml.acs_url,
        index="1",
    )
    artifact_acs.addnext(post_acs)
    world.sim.set_sp_metadata(etree.tostring(root))


async def _post_binding_response(
    world: LoginWorld, browser: aiohttp.ClientSession, scenario: str
) -> aiohttp.ClientResponse:
    """Start a login, re-send its AuthnRequest asking for HTTP-POST, and post the answer back.

    Our SP always asks for the Artifact binding, so the test builds the POST-binding
    AuthnRequest itself: same request ID, signed with the SP's own signing key.
    """
    _register_post_acs(world)
    _, request_id, relay_state = await _start(world, browser)
    sp = world.services.sp
    destination = sp.metadata.sso_urls[BINDING_POST]
    request = authn_request_xml(sp.settings, destination, request_id, dt.datetime.now(dt.UTC))
    request.set("ProtocolBinding", BINDING_POST)
    sign_enveloped(request, sp.keys.signing.key_pem, sp.keys.signing.cert_pem, insert_at=1)
    world.sim.use_scenario(scenario, request_id=request_id)
    async with browser.post(
        destination,
        data={
            "SAMLRequest": base64.b64encode(etree.tostring(request)).decode(),
            "RelayState": relay_state,
        },
        allow_redirects=False,
    ) as resp:
        assert resp.status == 200, await resp.text()
        form = parse_auto_post(await resp.text())
    assert form.action == world.url(ACS_PATH)
    assert set(form.fields) == {"SAMLResponse", "RelayState"}
    assert form.fields["RelayState"] == relay_state
    assert world.sim.issued[-1].artifact is None  # the simulator answered by POST
    resp, _ = await world.submit(browser, form, origin=_origin(destination))
    return resp


async def test_post_response_binding_logs_in_when_enabled(tmp_path: Path) -> None:
    """accept_post_response: a signed SAMLResponse posted with RelayState logs in."""
    async with login_world(
        tmp_path, saml={"accept_post_response": True}, simulator={"allow_post_binding": True}
    ) as world:
        browser = world.browser()
        with capture_logs() as logs:
            resp = await _post_binding_response(world, browser, "chain")
        assert resp.status == 200, await resp.text()
        assert str(resp.url) == world.url(DEEP_LINK)
        assert not _refusals(logs)
        session = await world.session_of(browser)
        assert session.identity.legal_subject_kvk == CLIENT_WITH_MANDATE


async def test_post_response_binding_is_refused_by_default(tmp_path: Path) -> None:
    """Without accept_post_response the same posted SAMLResponse gets a 4xx page and an audit."""
    async with login_world(tmp_path, simulator={"allow_post_binding": True}) as world:
        browser = world.browser()
        with capture_logs() as logs:
            resp = await _post_binding_response(world, browser, "chain")
        assert resp.status == 400
        assert "Traceback" not in await resp.text()
        refused = _refusals(logs)
        assert [(e["reason"], e["detail"]) for e in refused] == [
            ("saml_invalid", "post_binding_disabled")
        ]
        assert world.session_cookie(browser) is None


# -- RelayState ----------------------------------------------------------------


async def test_tampered_relay_state_is_refused(world: LoginWorld) -> None:
    """A changed RelayState at the ACS gets the LoginExpired page and a login_refused audit."""
    browser = world.browser()
    acs = await world.artifact_hop(browser, "direct")
    relay_state = parse_qs(urlsplit(acs).query)["RelayState"][0]
    tampered = relay_state[:-1] + ("A" if relay_state[-1] != "A" else "B")
    with capture_logs() as logs:
        resp, _ = await world.follow(
            browser, acs.replace(quote(relay_state, safe=""), quote(tampered, safe=""))
        )
    assert resp.status == 400
    page = await resp.text()
    assert "Inlogpoging verlopen" in page and "/_gateway/login" in page
    refused = _refusals(logs)
    assert [(e["reason"], e["detail"]) for e in refused] == [
        ("login_expired", "no pending login for this browser and RelayState")
    ]
    assert world.session_cookie(browser) is None


async def test_relay_state_over_80_bytes_is_refused(world: LoginWorld) -> None:
    """A RelayState of 81 bytes (counted in UTF-8, not characters) is refused by GET and POST."""
    browser = world.browser()
    for relay_state in ("x" * 81, "€" * 27):
        for method in ("GET", "POST"):
            acs = await world.artifact_hop(browser, "direct")
            artifact = parse_qs(urlsplit(acs).query)["SAMLart"][0]
            fields = {"SAMLart": artifact, "RelayState": relay_state}
            with capture_logs() as logs:
                if method == "GET":
                    query = "&".join(f"{k}={quote(v)}" for k, v in fields.items())
                    resp, _ = await world.follow(browser, world.url(ACS_PATH) + "?" + query)
                else:
                    resp, _ = await world.follow(
                        browser, world.url(ACS_PATH), method="POST", data=fields
                    )
            assert resp.status == 400, (relay_state, method)
            assert "Inlogpoging verlopen" in await resp.text()
            assert [(e["reason"], e["detail"]) for e in _refusals(logs)] == [
                ("login_expired", "RelayState longer than 80 bytes")
            ], (relay_state, method)
    assert world.session_cookie(browser) is None
