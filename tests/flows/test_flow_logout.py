"""Logout end to end: local logout, and SAML single logout through the simulator and back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs
from yarl import URL

from gateway.sessions.cookies import prelogin_cookie_name
from tests.support.login_world import LoginWorld, login_world

SLO_ON = {"saml": {"single_logout": True}}


@pytest.fixture
async def slo_world(tmp_path: Path) -> AsyncIterator[LoginWorld]:
    async with login_world(tmp_path, **SLO_ON) as w:
        yield w


async def _post_logout(world: LoginWorld, browser: aiohttp.ClientSession) -> str:
    """Log out with the session's CSRF token; return where the gateway redirects."""
    session = await world.session_of(browser)
    async with browser.post(
        world.url("/_gateway/logout"), data={"csrf": session.csrf_secret}, allow_redirects=False
    ) as resp:
        assert resp.status == 303
        return resp.headers["Location"]


async def _broker_answer(browser: aiohttp.ClientSession, slo_request_url: str) -> str:
    """Take the LogoutRequest to the simulator; return its redirect back to the gateway."""
    async with browser.get(URL(slo_request_url, encoded=True), allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()
        return resp.headers["Location"]


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def test_single_logout_round_trip_ends_both_sessions(slo_world: LoginWorld) -> None:
    """Logout sends a signed LogoutRequest to the broker, whose LogoutResponse ends on the
    logged-out page; the gateway and the broker session are both gone."""
    world = slo_world
    browser = world.browser()
    await world.login(browser, "chain")
    session = await world.session_of(browser)
    assert len(world.sim.sessions) == 1
    with capture_logs() as logs:
        location = await _post_logout(world, browser)
        assert location.startswith(world.sim.slo_url + "?SAMLRequest=")
        assert await world.services.sessions.load(session.id) is None  # ended before the hop
        resp, hops = await world.follow(browser, location)
    assert resp.status == 200
    assert "U bent uitgelogd" in await resp.text()
    assert hops[1].startswith(world.url("/_gateway/saml/slo?SAMLResponse="))
    assert hops[-1] == world.url("/_gateway/logged-out")
    record = world.sim.logouts[-1]
    assert (record.status, len(record.ended)) == ("success", 1)
    assert world.sim.sessions == {}
    for name in ("logout_succeeded", "slo_requested", "slo_completed"):
        (event,) = _events(logs, name)
        assert event["session_ref"] == session.ref
        assert event["administrator_kvk"] == session.identity.administrator_kvk
    assert not _events(logs, "logout_response_invalid")
    name_id = session.identity.name_id
    assert name_id is not None and all(name_id not in repr(e) for e in logs)
    _, hops = await world.follow(browser, world.url("/dashboard"))
    assert "/_gateway/login" in hops[1]


async def test_replayed_logout_response_is_refused_but_lands_logged_out(
    slo_world: LoginWorld,
) -> None:
    """A LogoutResponse URL used twice (even with the browser cookie) is refused and audited;
    the browser still sees the logged-out page."""
    world = slo_world
    browser = world.browser()
    await world.login(browser, "direct")
    back = await _broker_answer(browser, await _post_logout(world, browser))
    cookie_name = prelogin_cookie_name(world.config.sessions)
    cookie = next(c.value for c in browser.cookie_jar if c.key == cookie_name)
    resp, _ = await world.follow(browser, back)
    assert resp.status == 200
    browser.cookie_jar.update_cookies({cookie_name: cookie}, URL(world.gateway_url))
    with capture_logs() as logs:
        resp, hops = await world.follow(browser, back)
    assert resp.status == 200 and hops[-1] == world.url("/_gateway/logged-out")
    (event,) = _events(logs, "logout_response_invalid")
    assert event["detail"] == "logout_not_pending"
    assert not _events(logs, "slo_completed")


async def test_tampered_logout_response_is_audited_and_still_logged_out(
    slo_world: LoginWorld,
) -> None:
    """A LogoutResponse whose signature does not verify is audited as invalid; the local
    session is gone regardless and the browser lands on the logged-out page."""
    world = slo_world
    browser = world.browser()
    await world.login(browser, "direct")
    session = await world.session_of(browser)
    back = await _broker_answer(browser, await _post_logout(world, browser))
    forged = back.replace("&Signature=", "&Signature=AAAA", 1)
    with capture_logs() as logs:
        resp, hops = await world.follow(browser, forged)
    assert resp.status == 200 and hops[-1] == world.url("/_gateway/logged-out")
    (event,) = _events(logs, "logout_response_invalid")
    assert event["detail"] == "logout_response_signature_invalid"
    assert event["session_ref"] == session.ref
    assert await world.services.sessions.load(session.id) is None


@pytest.mark.parametrize(
    ("overrides", "skipped"),
    [
        ({}, None),
        ({**SLO_ON, "simulator": {"single_logout": False}}, "broker_has_no_single_logout_service"),
    ],
    ids=["slo-disabled", "broker-without-slo"],
)
async def test_logout_stays_local_without_single_logout(
    tmp_path: Path, overrides: dict[str, Any], skipped: str | None
) -> None:
    """With SLO off (the default), or a broker without SingleLogoutService, logout is local:
    straight to the logged-out page, nothing sent to the broker."""
    async with login_world(tmp_path, **overrides) as world:
        browser = world.browser()
        await world.login(browser, "direct")
        with capture_logs() as logs:
            location = await _post_logout(world, browser)
        assert location == "/_gateway/logged-out"
        assert world.sim.logouts == []
        assert not _events(logs, "slo_requested")
        assert [e["reason"] for e in _events(logs, "slo_skipped")] == ([skipped] if skipped else [])
        _, hops = await world.follow(browser, world.url("/dashboard"))
        assert "/_gateway/login" in hops[1]
