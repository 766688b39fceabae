"""Employer scope, step-up and the identity token, end to end over loopback (issues 5 and 6).

One login world serves the module: every test uses its own browser, so sessions
do not interfere, and the world's RSA keys are generated once.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
import pytest_asyncio
from lxml import etree
from structlog.testing import capture_logs

from tests.support.login_world import (
    ADMIN,
    CLIENT_WITH_MANDATE,
    DEFAULT_MANDATES,
    LoginWorld,
    login_world,
    mandate,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

NO_DECLARATIONS = "30000004"  # a client whose mandate lacks the `declarations` scope
FOREIGN = "99999999"  # an employer that never authorised the administrator
REVOKED = "30000003"  # in the registry, but revoked

MANDATES = [
    *DEFAULT_MANDATES,
    mandate(ADMIN, NO_DECLARATIONS, "Schildersbedrijf Noord", scopes=["employees"]),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LoginWorld]:
    async with login_world(tmp_path_factory.mktemp("scope"), mandates=MANDATES) as w:
        yield w


@pytest_asyncio.fixture(loop_scope="module")
async def direct(world: LoginWorld) -> aiohttp.ClientSession:
    """A browser logged in with the administrator's own eHerkenning (mode 1, EH3)."""
    browser = world.browser()
    resp, _ = await world.login(browser, "direct")
    assert resp.status == 200
    return browser


async def _denied(
    world: LoginWorld, browser: aiohttp.ClientSession, method: str, path: str, **kw: object
) -> tuple[int, str, list[dict[str, object]]]:
    """Send a request; return status, body and the audit events it caused."""
    seen = len(world.upstream_log.requests)
    with capture_logs() as logs:
        async with browser.request(method, world.url(path), allow_redirects=False, **kw) as resp:  # type: ignore[arg-type]
            body = await resp.text()
    if resp.status == 403:
        assert len(world.upstream_log.requests) == seen, "a refused request reached the portal"
    return resp.status, body, [e for e in logs if e.get("event") == "access_denied"]


@pytest.mark.parametrize(
    ("method", "path", "kw"),
    [
        ("GET", f"/werkgevers/{FOREIGN}/loonaangifte", {}),
        ("GET", f"/werkgevers/{REVOKED}/loonaangifte", {}),
        ("GET", f"/aangifte?werkgever={FOREIGN}", {}),
        ("GET", f"/aangifte?werkgever={CLIENT_WITH_MANDATE}&werkgever={FOREIGN}", {}),
        ("GET", "/aangifte", {"headers": {"X-Werkgever": FOREIGN}}),
        ("POST", "/aangifte", {"data": {"werkgever": FOREIGN, "bedrag": "12"}}),
        ("GET", "/fondsen/999999/overzicht", {}),
        ("GET", f"/aangifte?Werkgever={FOREIGN}", {}),
        ("POST", "/aangifte", {"data": {"WERKGEVER": FOREIGN}}),
    ],
    ids=[
        "path",
        "path-revoked",
        "query",
        "query-second-value",
        "header",
        "form",
        "fund-number",
        "query-name-case",
        "form-name-case",
    ],
)
async def test_foreign_employer_is_refused_before_the_portal(
    world: LoginWorld,
    direct: aiohttp.ClientSession,
    method: str,
    path: str,
    kw: dict[str, object],
) -> None:
    """An employer outside the allowed set, wherever the route says it appears, gets a 403 page."""
    status, body, denied = await _denied(world, direct, method, path, **kw)
    assert status == 403
    assert "gemachtigd" in body  # the EmployerNotAllowed page, in Dutch first
    assert 'href="/_gateway/employers"' in body  # a way on: the client overview
    assert len(denied) == 1
    assert denied[0]["reason"] == "employer"
    assert denied[0]["administrator_kvk"] == ADMIN
    assert denied[0]["session_ref"] == (await world.session_of(direct)).ref


@pytest.mark.parametrize(
    ("method", "path", "kw"),
    [
        ("GET", f"/werkgevers/{CLIENT_WITH_MANDATE}/loonaangifte", {}),
        ("GET", f"/aangifte?werkgever={CLIENT_WITH_MANDATE}", {}),
        ("GET", "/aangifte", {"headers": {"X-Werkgever": CLIENT_WITH_MANDATE}}),
        ("POST", "/aangifte", {"data": {"werkgever": CLIENT_WITH_MANDATE, "bedrag": "12"}}),
        ("GET", "/fondsen/100234/overzicht", {}),
    ],
    ids=["path", "query", "header", "form", "fund-number"],
)
async def test_allowed_employer_reaches_the_portal(
    world: LoginWorld,
    direct: aiohttp.ClientSession,
    method: str,
    path: str,
    kw: dict[str, object],
) -> None:
    """An allowed employer passes the same checks and the request (with its form body) arrives."""
    status, body, denied = await _denied(world, direct, method, path, **kw)
    assert status == 200, body
    assert denied == []
    seen = world.upstream_log.requests[-1]
    assert seen["path"] == path
    if method == "POST":
        assert seen["body_length"] == len("werkgever=23456789&bedrag=12")


async def test_multipart_form_on_a_form_scoped_route_is_refused(
    world: LoginWorld, direct: aiohttp.ClientSession
) -> None:
    """A form the gateway cannot read (multipart) never carries an unchecked employer upstream."""
    form = aiohttp.FormData({"werkgever": FOREIGN})
    form.add_field("bijlage", b"data", filename="a.txt")
    seen = len(world.upstream_log.requests)
    async with direct.post(world.url("/formulieren"), data=form) as resp:
        assert resp.status == 400
    assert len(world.upstream_log.requests) == seen
    async with direct.post(world.url("/formulieren"), data={"werkgever": FOREIGN}) as resp:
        assert resp.status == 403
    async with direct.post(
        world.url("/formulieren"), data={"werkgever": CLIENT_WITH_MANDATE}
    ) as resp:
        assert resp.status == 200


async def test_required_scope_missing_is_refused(
    world: LoginWorld, direct: aiohttp.ClientSession
) -> None:
    """A route needing the `declarations` scope refuses an allowed employer without it."""
    status, body, denied = await _denied(
        world, direct, "GET", f"/aangifte?werkgever={NO_DECLARATIONS}"
    )
    assert status == 403
    assert "geen toegang tot dit onderdeel" in body
    assert [e["reason"] for e in denied] == ["scope_missing"]
    async with direct.get(
        world.url(f"/aangifte?werkgever={NO_DECLARATIONS}"),
        headers={"Accept": "application/json"},
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "scope_missing"


def _authn_request(location: str) -> etree._Element:
    """Decode the Redirect-binding SAMLRequest (base64 of raw DEFLATE) in a broker URL."""
    query = parse_qs(urlsplit(location).query)
    raw = zlib.decompress(base64.b64decode(query["SAMLRequest"][0]), -15)
    return etree.fromstring(raw)


async def test_step_up_asks_the_broker_for_the_loa4_service(world: LoginWorld) -> None:
    """An EH3 session on an EH4 page is sent to log in again for the EH4 service, then passes."""
    browser = world.browser()
    await world.login(browser, "direct")
    async with browser.get(world.url("/gevoelig?x=1"), allow_redirects=False) as resp:
        assert resp.status == 303
        step_up = resp.headers["Location"]
    assert step_up.startswith("/_gateway/login?") and "loa=loa4" in step_up
    async with browser.get(world.url(step_up), allow_redirects=False) as resp:
        request = _authn_request(resp.headers["Location"])
    assert request.get("AttributeConsumingServiceIndex") == "1"
    ns = {"saml": "urn:oasis:names:tc:SAML:2.0:assertion"}
    refs = request.xpath("//saml:AuthnContextClassRef/text()", namespaces=ns)
    assert refs == ["urn:etoegang:core:assurance-class:loa4"]

    world.sim.use_scenario("direct-eh4")
    resp, hops = await world.follow(browser, world.url(step_up))
    assert resp.status == 200, await resp.text()
    assert hops[-1] == world.url("/gevoelig?x=1")
    token = world.upstream_headers()["x-gateway-identity"][0]
    claims = await world.verify(token, "sensitive")
    assert claims["loa"] == "loa4"


async def test_normal_login_asks_for_the_default_eh3_service(world: LoginWorld) -> None:
    """Without a step-up the AuthnRequest names the default service and leaves the level to it."""
    async with world.browser().get(world.url("/_gateway/login?next=/"), allow_redirects=False) as r:
        request = _authn_request(r.headers["Location"])
    assert request.get("AttributeConsumingServiceIndex") == "0"
    ns = {"samlp": "urn:oasis:names:tc:SAML:2.0:protocol"}
    assert request.xpath("//samlp:RequestedAuthnContext", namespaces=ns) == []


async def test_api_client_with_low_level_gets_403_not_a_redirect(
    world: LoginWorld, direct: aiohttp.ClientSession
) -> None:
    """A JSON client on an EH4 route with an EH3 session gets a 403 answer it can read."""
    async with direct.get(
        world.url("/gevoelig"), headers={"Accept": "application/json"}, allow_redirects=False
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "level_too_low"


async def test_client_sent_identity_headers_are_replaced(
    world: LoginWorld, direct: aiohttp.ClientSession
) -> None:
    """Forged identity headers never reach the portal: only the gateway's own token does."""
    forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJldmlsIn0."
    async with direct.get(
        world.url("/dashboard"),
        headers={"X-Gateway-Identity": forged, "x-gateway-identity": forged + "2"},
    ) as resp:
        assert resp.status == 200
    tokens = world.upstream_headers()["x-gateway-identity"]
    assert len(tokens) == 1 and forged not in tokens[0]
    await world.verify(tokens[0], "portal")

    async with direct.get(
        world.url("/api/things"),
        headers={"Authorization": f"Bearer {forged}", "X-Gateway-Identity": forged},
    ) as resp:
        assert resp.status == 200
    headers = world.upstream_headers()
    assert "x-gateway-identity" not in headers
    assert len(headers["authorization"]) == 1
    scheme, _, token = headers["authorization"][0].partition(" ")
    assert scheme == "Bearer" and token != forged
    await world.verify(token, "portal-api")


@pytest.mark.parametrize(
    "path", ["/openbaar/x", "/dashboard", f"/werkgevers/{CLIENT_WITH_MANDATE}/x"]
)
async def test_client_sent_authorization_never_reaches_a_backend_of_a_bearer_route(
    world: LoginWorld, direct: aiohttp.ClientSession, path: str
) -> None:
    """With a bearer route configured, a client's Authorization is removed on every route."""
    forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJldmlsIiwiYXVkIjoicG9ydGFsLWFwaSJ9."
    async with direct.get(world.url(path), headers={"Authorization": f"Bearer {forged}"}) as resp:
        assert resp.status == 200
    assert "authorization" not in world.upstream_headers()


async def test_each_route_gets_a_token_for_its_own_audience(
    world: LoginWorld, direct: aiohttp.ClientSession
) -> None:
    """The portal, employer pages and the API get tokens for different audiences."""
    tokens: dict[str, str] = {}
    for path, audience in (
        ("/dashboard", "portal"),
        (f"/werkgevers/{CLIENT_WITH_MANDATE}/x", "employer-pages"),
        ("/api/v1", "portal-api"),
    ):
        async with direct.get(world.url(path)) as resp:
            assert resp.status == 200
        headers = world.upstream_headers()
        value = headers.get("x-gateway-identity") or headers["authorization"]
        tokens[audience] = value[0].removeprefix("Bearer ")
        claims = await world.verify(tokens[audience], audience)
        assert claims["aud"] == audience
        assert claims["iss"] == world.gateway_url
    # A token for one route is not accepted by another route's backend.
    with pytest.raises(jwt.InvalidAudienceError):
        await world.verify(tokens["portal"], "portal-api")
    assert len(set(tokens.values())) == 3


async def test_token_is_reused_then_renewed_after_an_employer_switch(
    world: LoginWorld, direct: aiohttp.ClientSession
) -> None:
    """Consecutive requests carry the same token; choosing an employer yields a new one."""
    jtis = []
    for _ in range(2):
        async with direct.get(world.url("/dashboard")) as resp:
            assert resp.status == 200
        claims = await world.verify(world.upstream_headers()["x-gateway-identity"][0], "portal")
        jtis.append(claims["jti"])
    assert jtis[0] == jtis[1]
    before = claims.get("act_employer")

    session = await world.session_of(direct)
    target = "30000002" if session.active_employer == CLIENT_WITH_MANDATE else CLIENT_WITH_MANDATE
    async with direct.post(
        world.url("/_gateway/employers/select"),
        data={"csrf": session.csrf_secret, "kvk": target, "next": "/dashboard"},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 303
    async with direct.get(world.url("/dashboard")) as resp:
        assert resp.status == 200
    after = await world.verify(world.upstream_headers()["x-gateway-identity"][0], "portal")
    assert after["jti"] != jtis[0]
    assert after["act_employer"]["kvk"] == target
    assert after["act_employer"] != before
