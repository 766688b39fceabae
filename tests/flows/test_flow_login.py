"""Logins end to end: browser → gateway → simulator → ACS → session → upstream, over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.login_world import (
    ADMIN,
    CLIENT_WITH_MANDATE,
    CLIENT_WITHOUT_MANDATE,
    LoginWorld,
    login_world,
)
from tests.support.tokens import IdentityVerifier


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[LoginWorld]:
    async with login_world(tmp_path) as w:
        yield w


async def _verify(world: LoginWorld, token: str, audience: str) -> dict[str, Any]:
    """Verify as docs/backends.md says; in a thread, as the JWKS client blocks."""
    verifier = IdentityVerifier(
        jwks_url=world.url("/.well-known/jwks.json"), issuer=world.gateway_url, audience=audience
    )
    return await asyncio.to_thread(verifier.verify, token)


def _upstream_headers(world: LoginWorld) -> dict[str, str]:
    return {k.lower(): v for k, v in world.upstream_log.requests[-1]["headers"]}  # type: ignore[union-attr]


async def test_direct_login_reaches_overview_then_portal_with_token(world: LoginWorld) -> None:
    """Own eHerkenning: login lands on the client overview; the portal gets a verified token."""
    browser = world.browser()
    with capture_logs() as logs:
        resp, hops = await world.login(browser, "direct")
    assert resp.status == 200
    assert hops[-1].endswith("/_gateway/employers")
    page = await resp.text()
    assert "Bakkerij Brood B.V." in page and "Installatiebedrijf Van Dam" in page
    assert "Metaalwerken Zuid" not in page  # revoked
    assert "Zorggroep Oost" not in page  # branch-only mandate, unrestricted login
    succeeded = [e for e in logs if e["event"] == "login_succeeded"]
    assert succeeded[0]["mode"] == "direct"
    assert succeeded[0]["allowed_count"] == 2

    resp, _ = await world.follow(browser, world.url("/dashboard"))
    assert resp.status == 200
    token = _upstream_headers(world)["x-gateway-identity"]
    claims = await _verify(world, token, "portal")
    assert claims["mode"] == "direct"
    assert claims["org"]["kvk"] == ADMIN
    assert claims["loa"] == "loa3"
    assert sorted(e["kvk"] for e in claims["employers"]) == [CLIENT_WITH_MANDATE, "30000002"]
    assert (
        "cookie" not in _upstream_headers(world) or "gw_" not in _upstream_headers(world)["cookie"]
    )


async def test_chain_login_with_mandate_allows_exactly_one_employer(world: LoginWorld) -> None:
    """Ketenmachtiging with a fund mandate: the session holds only that one, active employer."""
    browser = world.browser()
    resp, hops = await world.login(browser, "chain", "/werkgevers/" + CLIENT_WITH_MANDATE + "/x")
    assert resp.status == 200, await resp.text()
    assert hops[-1].endswith(f"/werkgevers/{CLIENT_WITH_MANDATE}/x")
    token = _upstream_headers(world)["x-gateway-identity"]
    claims = await _verify(world, token, "employer-pages")
    assert claims["mode"] == "chain"
    assert claims["org"]["kvk"] == ADMIN
    assert [e["kvk"] for e in claims["employers"]] == [CLIENT_WITH_MANDATE]
    assert claims["act_employer"]["kvk"] == CLIENT_WITH_MANDATE


async def test_chain_login_without_fund_mandate_is_refused_with_explanation(
    world: LoginWorld,
) -> None:
    """Ketenmachtiging without a mandate at the fund: a 403 page saying what is missing."""
    browser = world.browser()
    with capture_logs() as logs:
        resp, _ = await world.login(browser, "chain-no-mandate")
    assert resp.status == 403
    page = await resp.text()
    assert "ook bij" in page and "machtigen" in page
    refused = [e for e in logs if e["event"] == "login_refused"]
    assert refused[0]["reason"] == "mandate_missing"
    assert refused[0]["employer_kvk"] == CLIENT_WITHOUT_MANDATE
    resp, hops = await world.follow(browser, world.url("/dashboard"))
    assert "/_gateway/login" in hops[1]  # no session was created


@pytest.mark.parametrize("scenario", ["direct-eh2", "direct-eh2plus", "chain-eh2"])
async def test_level_below_eh3_is_refused_with_supplier_advice(
    world: LoginWorld, scenario: str
) -> None:
    """EH2 and EH2+ logins get the level page telling them to ask their supplier for EH3."""
    resp, _ = await world.login(world.browser(), scenario)
    assert resp.status == 403
    page = await resp.text()
    assert "EH3" in page and "leverancier" in page


@pytest.mark.parametrize(
    ("scenario", "status", "phrase"),
    [
        ("cancel", 400, "afgebroken"),
        ("authn-failed", 400, "niet gelukt"),
        ("not-authorised", 403, "geen toegang tot deze dienst"),
    ],
)
async def test_broker_error_statuses_get_friendly_pages(
    world: LoginWorld, scenario: str, status: int, phrase: str
) -> None:
    """Cancel, failure and no-authorisation at the broker end on a page with a way back in."""
    with capture_logs() as logs:
        resp, _ = await world.login(world.browser(), scenario)
    assert resp.status == status
    page = await resp.text()
    assert phrase in page
    assert "/_gateway/login" in page  # a button to log in again
    assert any(e["event"] == "login_refused" for e in logs)


async def test_unauthenticated_browser_is_sent_to_login_and_back(world: LoginWorld) -> None:
    """A protected deep link redirects to login and, after it, back to the same path."""
    browser = world.browser()
    world.sim.use_scenario("chain")
    resp, hops = await world.follow(
        browser, world.url("/werkgevers/23456789/loonaangifte?jaar=2026")
    )
    assert resp.status == 200
    assert "/_gateway/login?next=" in hops[1]
    assert hops[-1].endswith("/werkgevers/23456789/loonaangifte?jaar=2026")


async def test_api_client_without_session_gets_401_json(world: LoginWorld) -> None:
    """An API client gets 401 JSON with the login URL instead of a redirect."""
    browser = world.browser()
    async with browser.get(
        world.url("/api/things"), headers={"Accept": "application/json"}, allow_redirects=False
    ) as resp:
        assert resp.status == 401
        body = await resp.json()
    assert body["error"] == "not_authenticated"
    assert body["login_url"].startswith("/_gateway/login?next=")


async def test_artifact_cannot_be_replayed(world: LoginWorld) -> None:
    """The same ACS URL (artifact + RelayState) completes a login once, never twice."""
    browser = world.browser()
    acs = await world.artifact_hop(browser, "direct")
    resp, _ = await world.follow(browser, acs)
    assert resp.status == 200
    with capture_logs() as logs:
        resp, _ = await world.follow(browser, acs)
    assert resp.status == 400
    assert [e["reason"] for e in logs if e["event"] == "login_refused"] == ["login_expired"]


async def test_response_brought_by_another_browser_is_refused(world: LoginWorld) -> None:
    """An ACS URL stolen from one browser does not log in another (pre-login cookie binding)."""
    victim = world.browser()
    acs = await world.artifact_hop(victim, "direct")
    attacker = world.browser()
    resp, _ = await world.follow(attacker, acs)
    assert resp.status == 400
    resp, _ = await world.follow(victim, acs)
    assert resp.status == 200  # the real browser's login still works


async def test_malformed_acs_input_is_a_4xx_page_never_500(world: LoginWorld) -> None:
    """Garbage at the ACS gets a 4xx page and an audit event, never a traceback."""
    browser = world.browser()
    for query in ("", "?SAMLart=not-base64!!&RelayState=x", "?SAMLResponse=PHg%2B&RelayState=y"):
        with capture_logs() as logs:
            async with browser.get(world.url("/_gateway/saml/acs" + query)) as resp:
                assert 400 <= resp.status < 500, query
                assert "Traceback" not in await resp.text()
        assert any(e["event"] == "login_refused" for e in logs)


async def test_open_redirect_through_next_is_prevented(world: LoginWorld) -> None:
    """A `next` pointing off-site ends on the gateway's own pages, never elsewhere."""
    browser = world.browser()
    world.sim.use_scenario("chain")
    _, hops = await world.follow(browser, world.url("/_gateway/login?next=//evil.example/x"))
    assert all("evil.example" not in h for h in hops[1:] if h.startswith("http://127.0.0.1"))
    assert hops[-1].startswith(world.gateway_url)


async def test_logout_requires_csrf_and_ends_session(world: LoginWorld) -> None:
    """Logout without the CSRF token is refused; with it the session ends everywhere."""
    browser = world.browser()
    await world.login(browser, "chain")
    async with browser.post(world.url("/_gateway/logout"), data={}, allow_redirects=False) as resp:
        assert resp.status == 403
    session = await _session_of(world, browser)
    async with browser.post(
        world.url("/_gateway/logout"), data={"csrf": session.csrf_secret}, allow_redirects=False
    ) as resp:
        assert resp.status == 303
        assert resp.headers["Location"].endswith("/_gateway/logged-out")
    resp, hops = await world.follow(browser, world.url("/dashboard"))
    assert "/_gateway/login" in hops[1]


async def _session_of(world: LoginWorld, browser) -> object:  # type: ignore[no-untyped-def]
    settings = world.config.sessions
    from gateway.sessions.cookies import session_cookie_name

    name = session_cookie_name(settings)
    cookie = next(c for c in browser.cookie_jar if c.key == name)
    session = await world.services.sessions.load(cookie.value)
    assert session is not None
    return session


async def test_sp_metadata_is_served(world: LoginWorld) -> None:
    """The SP metadata for broker registration is served, signed, without NameIDFormat."""
    async with world.browser().get(world.url("/_gateway/saml/metadata")) as resp:
        assert resp.status == 200
        body = await resp.text()
    assert "Signature" in body and "HTTP-Artifact" in body
    assert "NameIDFormat" not in body


async def test_dependencies_report_store_broker_and_registry(world: LoginWorld) -> None:
    """/_gateway/dependencies reports the store, broker metadata and registry as up."""
    async with world.browser().get(world.url("/_gateway/dependencies")) as resp:
        body = await resp.json()
    assert resp.status == 200, body
    assert {name: d["up"] for name, d in body["dependencies"].items()} == {
        "store": True,
        "broker": True,
        "registry": True,
        "upstreams": True,
    }
