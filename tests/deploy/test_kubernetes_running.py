"""The Kubernetes configuration as a running system: its routes check employers and audiences.

``tests/support/kubernetes_world.py`` runs the base rendering's gateway (its
ConfigMap unchanged, its Secrets made up, two workers on Redis over TLS)
with real peers. A browser logs in through the broker simulator, then asks
for employer pages: its own employer reaches the portal with a token that
the documented verifier (``gateway_dev/portal/verify.py``, audience ``portal``)
accepts, a foreign employer is refused with the gateway's 403 before the
portal sees anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from tests.support.kubernetes_world import KubernetesWorld
from tests.support.login_world import follow_redirects, login_by_form
from tests.support.tokens import IdentityVerifier

OFFICE = "12345678"  # the example scenarios' office (`direct`, `chain`)
CLIENT = "23456789"  # its client in the `chain` scenario
FOREIGN = "34567890"  # an employer that never authorised the office

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KubernetesWorld]:
    world = KubernetesWorld(tmp_path_factory.mktemp("kubernetes"))
    try:
        await world.start()
        assert world.registry is not None
        world.registry.add(OFFICE, employer_kvk=CLIENT, employer_name="Bakkerij Brood B.V.")
        world.registry.add(OFFICE, employer_kvk="30000005", employer_name="Hoveniersbedrijf Groen")
        yield world
    finally:
        await world.stop()


def _browser(world: KubernetesWorld) -> aiohttp.ClientSession:
    # Production cookies (__Host-, Secure) over the test's plain-HTTP gateway URL.
    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[world.url])
    connector = aiohttp.TCPConnector(ssl=world.browser_ssl())
    return aiohttp.ClientSession(
        cookie_jar=jar, connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    )


async def _token(world: KubernetesWorld) -> str:
    headers = dict(world.upstream_log.requests[-1]["headers"])  # type: ignore[arg-type]
    token = headers.get("X-Gateway-Identity")
    assert token, headers
    return token


async def test_own_employer_reaches_the_portal_with_a_token_for_audience_portal(
    world: KubernetesWorld,
) -> None:
    """Chain login; /werkgevers/<its employer>/ reaches the portal; verify.py accepts the token."""
    async with _browser(world) as browser:
        final, page = await login_by_form(browser, world.url + "/", "chain")
        assert final.status == 200, page[:2000]
        seen = len(world.upstream_log.requests)
        resp, _ = await follow_redirects(browser, f"{world.url}/werkgevers/{CLIENT}/aangifte")
        assert resp.status == 200
        assert len(world.upstream_log.requests) == seen + 1
        assert world.upstream_log.requests[-1]["path"] == f"/werkgevers/{CLIENT}/aangifte"
    verifier = IdentityVerifier(
        world.url + "/.well-known/jwks.json", issuer=world.url, audience="portal"
    )
    claims = await asyncio.to_thread(verifier.verify, await _token(world))
    assert claims["aud"] == "portal"
    assert claims["mode"] == "chain"
    assert [e["kvk"] for e in claims["employers"]] == [CLIENT]


async def test_foreign_employer_is_refused_before_the_portal(world: KubernetesWorld) -> None:
    """Direct login; a foreign employer's page is the gateway's 403, the portal sees nothing."""
    async with _browser(world) as browser:
        final, page = await login_by_form(browser, world.url + "/", "direct")
        assert final.status == 200, page[:2000]
        seen = len(world.upstream_log.requests)
        resp, _ = await follow_redirects(browser, f"{world.url}/werkgevers/{FOREIGN}/aangifte")
        assert resp.status == 403
        assert "employer_not_allowed" in await resp.text()
        assert len(world.upstream_log.requests) == seen, "the portal was not asked"
        resp, _ = await follow_redirects(browser, f"{world.url}/werkgevers/30000005/overzicht")
        assert resp.status == 200, "an employer of the office's own set passes"
    verifier = IdentityVerifier(
        world.url + "/.well-known/jwks.json", issuer=world.url, audience="portal"
    )
    claims = await asyncio.to_thread(verifier.verify, await _token(world))
    assert {e["kvk"] for e in claims["employers"]} == {CLIENT, "30000005"}


async def test_every_authenticated_route_sends_a_token_the_portal_accepts(
    world: KubernetesWorld,
) -> None:
    """Each authenticated route of the ConfigMap forwards a token verify.py accepts (aud portal)."""
    verifier = IdentityVerifier(
        world.url + "/.well-known/jwks.json", issuer=world.url, audience="portal"
    )
    paths = {"employer-pages": f"/werkgevers/{CLIENT}/x", "portal": "/start"}
    routes = [r for r in world.config["routes"] if r.get("policy") != "public"]
    assert {r["name"] for r in routes} == set(paths)
    async with _browser(world) as browser:
        await login_by_form(browser, world.url + "/", "chain")
        for route in routes:
            resp, _ = await follow_redirects(browser, world.url + paths[route["name"]])
            assert resp.status == 200, route["name"]
            claims = await asyncio.to_thread(verifier.verify, await _token(world))
            assert claims["aud"] == "portal", route["name"]
        resp, _ = await follow_redirects(browser, world.url + "/static/app.css")
        assert resp.status == 200
        headers = dict(world.upstream_log.requests[-1]["headers"])  # type: ignore[arg-type]
        assert "X-Gateway-Identity" not in headers, "public routes carry no identity"
