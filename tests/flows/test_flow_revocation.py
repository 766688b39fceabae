"""Revoked mandates during a session: by the periodic re-check and by the registry's push.

Time is controlled through settings: one world re-checks every 0.5 s (the
tests wait one interval), the other every hour, so only a push can make a
revocation visible there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from tests.support.login_world import (
    ADMIN,
    CLIENT_WITH_MANDATE,
    DEFAULT_MANDATES,
    LoginWorld,
    login_world,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

INTERVAL = 0.5  # seconds between mandate re-checks in the `periodic` world
OTHER = "30000002"  # Installatiebedrijf Van Dam, the second allowed client
ADMIN_TOKEN = "registry-push-secret-0123456789"  # what login_world writes to keys/admin.token


def _without(*kvks: str) -> list[dict[str, object]]:
    return [m for m in DEFAULT_MANDATES if m["employer_kvk"] not in kvks]


# A file source that notices edits at once (see the report on check_interval), short cache.
MANDATE_SETTINGS = {"source": {"kind": "file", "check_interval": 0.01}, "cache_ttl": 0.2}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def periodic(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LoginWorld]:
    async with login_world(
        tmp_path_factory.mktemp("periodic"),
        sessions={"mandate_recheck_interval": INTERVAL},
        mandate_settings=MANDATE_SETTINGS,
    ) as w:
        yield w


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pushed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LoginWorld]:
    async with login_world(
        tmp_path_factory.mktemp("pushed"),
        sessions={"mandate_recheck_interval": 3600, "mandate_max_staleness": 7200},
        mandate_settings=MANDATE_SETTINGS,
    ) as w:
        yield w


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def _registry_restored(request: pytest.FixtureRequest) -> None:
    """Every test starts from the default registry file, with no answer cached from before."""
    for name in ("periodic", "pushed"):
        if name in request.fixturenames:
            world: LoginWorld = request.getfixturevalue(name)
            world.write_mandates(DEFAULT_MANDATES)
            await world.services.mandates.invalidate(ADMIN)


async def _token_claims(world: LoginWorld, browser: aiohttp.ClientSession) -> dict[str, object]:
    async with browser.get(world.url("/dashboard"), allow_redirects=False) as resp:
        assert resp.status == 200, await resp.text()
    return await world.verify(world.upstream_headers()["x-gateway-identity"][0], "portal")


def _kvks(claims: dict[str, object]) -> list[str]:
    return sorted(e["kvk"] for e in claims["employers"])  # type: ignore[attr-defined, index]


async def _push(
    world: LoginWorld, body: object, token: str | None = ADMIN_TOKEN
) -> aiohttp.ClientResponse:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with world.browser().post(
        world.url("/_gateway/admin/mandates/invalidate"),
        data=body if isinstance(body, bytes) else None,
        json=None if isinstance(body, bytes) else body,
        headers=headers,
    ) as resp:
        await resp.read()
        return resp


async def test_revoked_mandate_leaves_the_token_after_the_interval(periodic: LoginWorld) -> None:
    """A mandate removed from the registry disappears from the next token after one interval."""
    browser = periodic.browser()
    await periodic.login(browser, "direct")
    assert _kvks(await _token_claims(periodic, browser)) == [CLIENT_WITH_MANDATE, OTHER]
    periodic.write_mandates(_without(OTHER))
    await asyncio.sleep(INTERVAL)
    with capture_logs() as logs:
        claims = await _token_claims(periodic, browser)
    assert _kvks(claims) == [CLIENT_WITH_MANDATE]
    revoked = [e for e in logs if e["event"] == "mandate_revoked_during_session"]
    assert len(revoked) == 1
    assert revoked[0]["employer_kvk"] == OTHER and revoked[0]["administrator_kvk"] == ADMIN
    assert (await periodic.session_of(browser)).allowed_kvks == {CLIENT_WITH_MANDATE}


async def test_active_employer_revoked_sends_the_browser_to_the_overview(
    periodic: LoginWorld,
) -> None:
    """When the employer being worked on withdraws, the browser lands on the overview notice."""
    browser = periodic.browser()
    await periodic.login(browser, "direct")
    session = await periodic.session_of(browser)
    async with browser.post(
        periodic.url("/_gateway/employers/select"),
        data={"csrf": session.csrf_secret, "kvk": OTHER},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 303
    periodic.write_mandates(_without(OTHER))
    await asyncio.sleep(INTERVAL)
    resp, hops = await periodic.follow(browser, periodic.url("/werkgevers/30000002/loon"))
    assert hops[1].endswith("/_gateway/employers?notice=revoked")
    assert resp.status == 200
    page = await resp.text()
    assert "heeft de machtiging ingetrokken" in page
    assert "Installatiebedrijf Van Dam" not in page
    assert (await periodic.session_of(browser)).active_employer is None
    # The employer is now foreign to this session.
    async with browser.get(periodic.url("/werkgevers/30000002/loon")) as resp:
        assert resp.status == 403


async def test_push_takes_effect_on_the_next_request(pushed: LoginWorld) -> None:
    """The registry's push applies a revocation at once, long before the hourly re-check."""
    browser = pushed.browser()
    await pushed.login(browser, "direct")
    assert _kvks(await _token_claims(pushed, browser)) == [CLIENT_WITH_MANDATE, OTHER]
    pushed.write_mandates(_without(OTHER))
    assert _kvks(await _token_claims(pushed, browser)) == [CLIENT_WITH_MANDATE, OTHER]  # no push
    with capture_logs() as logs:
        resp = await _push(pushed, {"administrator_kvk": ADMIN, "employer_kvk": OTHER})
    assert resp.status == 202
    assert [e["employer_kvk"] for e in logs if e["event"] == "mandates_invalidated"] == [OTHER]
    assert _kvks(await _token_claims(pushed, browser)) == [CLIENT_WITH_MANDATE]


@pytest.mark.parametrize(
    "token", [None, "wrong-secret-0123456789", ""], ids=["none", "wrong", "empty"]
)
async def test_push_without_the_admin_credential_is_401(
    pushed: LoginWorld, token: str | None
) -> None:
    """The push endpoint refuses a missing or wrong admin token and changes nothing."""
    browser = pushed.browser()
    await pushed.login(browser, "direct")
    pushed.write_mandates(_without(OTHER))
    with capture_logs() as logs:
        resp = await _push(pushed, {"administrator_kvk": ADMIN}, token=token)
    assert resp.status == 401
    assert any(e["event"] == "admin_access_denied" for e in logs)
    assert not any(e["event"] == "mandates_invalidated" for e in logs)
    assert _kvks(await _token_claims(pushed, browser)) == [CLIENT_WITH_MANDATE, OTHER]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        {"administrator_kvk": "1234"},
        {"administrator_kvk": ADMIN, "surprise": 1},
        {"employer_kvk": OTHER},
        [ADMIN],
    ],
    ids=["not-json", "short-kvk", "unknown-field", "no-administrator", "array"],
)
async def test_push_with_a_bad_body_is_400(pushed: LoginWorld, body: object) -> None:
    """A malformed invalidation body is refused with 400."""
    resp = await _push(pushed, body)
    assert resp.status == 400


async def test_chain_session_whose_mandate_is_revoked_ends(pushed: LoginWorld) -> None:
    """A chain login's only mandate revoked: the next request shows MandateMissing, session gone."""
    browser = pushed.browser()
    resp, _ = await pushed.login(browser, "chain", "/dashboard")
    assert resp.status == 200
    pushed.write_mandates(_without(CLIENT_WITH_MANDATE))
    assert (await _push(pushed, {"administrator_kvk": ADMIN})).status == 202
    seen = len(pushed.upstream_log.requests)
    async with browser.get(pushed.url("/dashboard"), allow_redirects=False) as resp:
        assert resp.status == 403
        page = await resp.text()
    assert "Machtiging bij het pensioenfonds ontbreekt" in page
    assert len(pushed.upstream_log.requests) == seen
    cookie = pushed.session_cookie(browser)
    assert await pushed.services.sessions.load(cookie) is None
    async with browser.get(pushed.url("/dashboard"), allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"].startswith("/_gateway/login?")
