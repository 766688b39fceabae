"""The administrator's overview, choosing an employer, and what the audit trail holds.

One login world (with the access log switched on, so the secret checks see it
too) serves the module; each test uses its own browser.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from tests.support.login_world import ADMIN, CLIENT_WITH_MANDATE, LoginWorld, login_world

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LoginWorld]:
    async with login_world(
        tmp_path_factory.mktemp("overview"), logging={"format": "json", "access_log": True}
    ) as w:
        yield w


async def _page(
    world: LoginWorld, browser: aiohttp.ClientSession, path: str, **headers: str
) -> tuple[int, str]:
    async with browser.get(world.url(path), headers=headers, allow_redirects=False) as resp:
        return resp.status, await resp.text()


async def test_direct_overview_lists_names_kvk_and_fund_numbers(world: LoginWorld) -> None:
    """Mode 1: the overview lists every allowed employer with name, KvK and fund number."""
    browser = world.browser()
    resp, _ = await world.login(browser, "direct")
    page = await resp.text()
    assert '<html lang="nl">' in page
    for text in ("Bakkerij Brood B.V.", CLIENT_WITH_MANDATE, "100234"):
        assert text in page
    for text in ("Installatiebedrijf Van Dam", "30000002", "100871"):
        assert text in page
    assert "2 van 2 klanten" in page
    assert 'name="csrf"' in page  # the choose buttons are CSRF-protected forms


async def test_overview_as_json_for_the_portal(world: LoginWorld) -> None:
    """The same overview is available as JSON, with search and paging fields."""
    browser = world.browser()
    await world.login(browser, "direct")
    async with browser.get(
        world.url("/_gateway/employers?q=brood"), headers={"Accept": "application/json"}
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["mode"] == "direct"
    assert body["administrator"]["kvk"] == ADMIN
    assert body["total"] == 1 and body["page"] == 1 and body["pages"] == 1
    assert body["employers"] == [
        {"kvk": CLIENT_WITH_MANDATE, "name": "Bakkerij Brood B.V.", "fund_number": "100234"}
    ]


async def test_zero_mandates_overview_explains_how_clients_authorise(world: LoginWorld) -> None:
    """Mode 1 without any mandate: the login succeeds to an overview that explains mandates."""
    browser = world.browser()
    resp, hops = await world.login(browser, "direct-eh4")  # Salarisbureau Pietersen: no mandates
    assert resp.status == 200
    assert hops[-1].endswith("/_gateway/employers")
    page = await resp.text()
    assert "Nog geen klanten" in page
    assert "U kunt alleen zaken regelen voor klanten die u gemachtigd hebben" in page
    assert "<table" not in page


async def test_chain_overview_shows_one_employer_and_how_to_switch(world: LoginWorld) -> None:
    """Mode 2: the overview shows the one employer and says another client needs a new login."""
    browser = world.browser()
    await world.login(browser, "chain")
    status, page = await _page(world, browser, "/_gateway/employers")
    assert status == 200
    assert "Bakkerij Brood B.V." in page and "Installatiebedrijf Van Dam" not in page
    assert "ketenmachtiging" in page and "Log dan opnieuw in" in page
    assert 'name="q"' not in page  # no search for a single client


async def test_overview_in_english_by_parameter_or_browser_language(world: LoginWorld) -> None:
    """`?lang=en` and `Accept-Language: en` give the English overview, with a way back to Dutch."""
    browser = world.browser()
    await world.login(browser, "direct")
    for path, headers in (
        ("/_gateway/employers?lang=en", {}),
        ("/_gateway/employers", {"Accept-Language": "en-GB,en;q=0.9,nl;q=0.5"}),
    ):
        status, page = await _page(world, browser, path, **headers)
        assert status == 200
        assert '<html lang="en">' in page
        assert "Your clients" in page and "Search by name, KvK number or fund number" in page
        assert "lang=nl" in page  # the "Nederlands" link works whatever the browser prefers
    status, page = await _page(
        world, browser, "/_gateway/employers?lang=nl", **{"Accept-Language": "en"}
    )
    assert "Uw klanten" in page


async def test_choosing_an_employer_needs_csrf_and_rotates_the_session(world: LoginWorld) -> None:
    """Choosing needs the CSRF token, rotates the session ID, and is audited."""
    browser = world.browser()
    await world.login(browser, "direct")
    old_cookie = world.session_cookie(browser)
    session = await world.session_of(browser)
    select = world.url("/_gateway/employers/select")

    async with browser.post(
        select, data={"kvk": CLIENT_WITH_MANDATE}, allow_redirects=False
    ) as resp:
        assert resp.status == 403
    async with browser.post(
        select, data={"kvk": CLIENT_WITH_MANDATE, "csrf": "wrong"}, allow_redirects=False
    ) as resp:
        assert resp.status == 403
    assert world.session_cookie(browser) == old_cookie
    assert (await world.session_of(browser)).active_employer is None

    with capture_logs() as logs:
        async with browser.post(
            select,
            data={"kvk": "99999999", "csrf": session.csrf_secret},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 403  # not one of the allowed employers
        async with browser.post(
            select,
            data={"kvk": CLIENT_WITH_MANDATE, "csrf": session.csrf_secret, "next": "/dashboard"},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == "/dashboard"
    new_cookie = world.session_cookie(browser)
    assert new_cookie and new_cookie != old_cookie
    assert (await world.session_of(browser)).active_employer == CLIENT_WITH_MANDATE
    selected = [e for e in logs if e["event"] == "employer_selected"]
    assert len(selected) == 1
    assert selected[0]["employer_kvk"] == CLIENT_WITH_MANDATE
    assert selected[0]["session_ref"] == (await world.session_of(browser)).ref
    assert [e["reason"] for e in logs if e["event"] == "access_denied"] == ["employer_selection"]

    # The old cookie value is dead: a browser presenting it is sent to log in.
    thief = world.browser()
    name = world.config.sessions.effective_cookie_name(world.config.sessions.cookie_name)
    async with thief.get(
        world.url("/dashboard"), headers={"Cookie": f"{name}={old_cookie}"}, allow_redirects=False
    ) as resp:
        assert resp.status == 303
        assert resp.headers["Location"].startswith("/_gateway/login?")
    status, page = await _page(world, browser, "/_gateway/employers")
    assert status == 200 and 'aria-current="true"' in page


async def test_login_audit_fields_and_no_secrets_in_any_log_event(world: LoginWorld) -> None:
    """login_succeeded has the documented fields; no log event holds a cookie, SAML or token."""
    browser = world.browser()
    with capture_logs() as logs:
        resp, hops = await world.login(browser, "direct")
        assert resp.status == 200
        session = await world.session_of(browser)
        async with browser.post(
            world.url("/_gateway/employers/select"),
            data={"kvk": CLIENT_WITH_MANDATE, "csrf": session.csrf_secret},
            allow_redirects=False,
        ) as r:
            assert r.status == 303
        async with browser.get(world.url("/dashboard?page=1")) as r:
            assert r.status == 200
        token = world.upstream_headers()["x-gateway-identity"][0]
        async with browser.get(
            world.url("/_gateway/api/employers"), headers={"Authorization": f"Bearer {token}"}
        ) as r:
            assert r.status == 200
        rotated = await world.session_of(browser)
        async with browser.post(
            world.url("/_gateway/logout"),
            data={"csrf": rotated.csrf_secret},
            allow_redirects=False,
        ) as r:
            assert r.status == 303

    succeeded = [e for e in logs if e["event"] == "login_succeeded"]
    assert len(succeeded) == 1
    event = succeeded[0]
    assert event["mode"] == "direct"
    assert event["administrator_kvk"] == ADMIN
    assert event["allowed_count"] == 2
    assert event["acting_subject"]
    assert event["session_ref"] == session.ref and event["session_ref"] != session.id
    assert len(event["request_id"]) >= 8
    assert any(e["event"] == "request_handled" for e in logs)  # the access log was captured

    secrets = {
        "session cookie": session.id,
        "rotated session cookie": rotated.id,
        "csrf secret": session.csrf_secret,
        "token": token,
        "token signature": token.rsplit(".", 1)[1],
    }
    for hop in hops:
        query = parse_qs(urlsplit(hop).query)
        for name in ("SAMLRequest", "SAMLart", "SAMLResponse", "Signature"):
            for value in query.get(name, []):
                secrets[name] = value
    assert {"SAMLRequest", "SAMLart"} <= secrets.keys()
    for cookie in browser.cookie_jar:
        secrets[f"cookie {cookie.key}"] = cookie.value
    for event in logs:
        text = json.dumps(event, default=str)
        for what, value in secrets.items():
            if value:
                assert value not in text, f"{what} in log event {event['event']}"
        assert "<saml" not in text and "Assertion" not in text
