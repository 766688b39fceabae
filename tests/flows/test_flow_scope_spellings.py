"""Every spelling of a foreign employer's page is refused before the portal sees it.

A logged-in administrator sends, over a raw socket (so no client library
normalises the URL first), each spelling under which a portal on a servlet,
PHP or IIS stack may serve employer 99999999's pages. The upstream records
what it receives; for every row, the foreign employer's page must never
arrive, and the client must get the 403 page (the scope check ran) or the 400
page (the shape is refused outright). The same spellings for an employer the
administrator may act for are forwarded byte for byte.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from tests.support.login_world import CLIENT_WITH_MANDATE, LoginWorld, login_world
from tests.support.raw_http import raw_exchange

pytestmark = pytest.mark.asyncio(loop_scope="module")

FOREIGN = "99999999"
NINES = "%39" * 8  # 99999999, every digit percent-encoded

# (spelling, expected status): 403 = the scope check refused it; 400 = refused as a shape.
FOREIGN_SPELLINGS = [
    (f"/werkgevers/{FOREIGN}/loonaangifte", 403),
    (f"/werkgevers/{FOREIGN}", 403),
    (f"/werkgevers/{FOREIGN}/", 403),
    (f"/werkgevers/{FOREIGN}?tab=1", 403),
    (f"/Werkgevers/{FOREIGN}/loonaangifte", 403),
    (f"/WERKGEVERS/{FOREIGN}", 403),
    (f"/wErKgEvErS/{FOREIGN}/x", 403),
    (f"/%77erkgevers/{FOREIGN}/x", 403),
    (f"/werkgevers/{NINES}/x", 403),
    (f"/werkgevers/%20{FOREIGN}/x", 403),
    (f"/werkgevers/0{FOREIGN}/x", 403),
    (f"/werkgevers/{FOREIGN}.json", 403),
    (f"/werkgevers/{FOREIGN}%2Fx", 400),
    (f"/werkgevers%2F{FOREIGN}/x", 400),
    (f"/werkgevers;x=1/{FOREIGN}/x", 400),
    (f"/werkgevers/{FOREIGN};x=1/x", 400),
    (f"/werkgevers/{FOREIGN};jsessionid=1", 400),
    (f"/werkgevers%3B/{FOREIGN}/x", 400),
    (f"/werkgevers//{FOREIGN}/x", 400),
    (f"//werkgevers/{FOREIGN}/x", 400),
    (f"/werkgevers/./{FOREIGN}/x", 400),
    (f"/x/../werkgevers/{FOREIGN}/x", 400),
    (f"/x/%2e%2e/werkgevers/{FOREIGN}/x", 400),
    (f"/werkgevers\\{FOREIGN}/x", 400),
    (f"/werkgevers%5C{FOREIGN}/x", 400),
    (f"http://127.0.0.1/werkgevers/{FOREIGN}/x", 400),
    (f"http://evil.example/werkgevers/{FOREIGN}/x", 400),
]

ALLOWED_SPELLINGS = [
    f"/werkgevers/{CLIENT_WITH_MANDATE}/loonaangifte?q=a+b%26c",
    f"/werkgevers/{CLIENT_WITH_MANDATE}",
    f"/Werkgevers/{CLIENT_WITH_MANDATE}/",
    f"/werkgevers/{''.join(f'%{ord(c):02X}' for c in CLIENT_WITH_MANDATE)}/x",
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LoginWorld]:
    async with login_world(tmp_path_factory.mktemp("spellings")) as w:
        yield w


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cookie(world: LoginWorld) -> str:
    """The Cookie header of a browser logged in with its own eHerkenning (mode 1)."""
    browser = world.browser()
    resp, _ = await world.login(browser, "direct")
    assert resp.status == 200
    value = world.session_cookie(browser)
    assert value is not None
    name = world.config.sessions.effective_cookie_name(world.config.sessions.cookie_name)
    return f"{name}={value}"


async def _send(world: LoginWorld, cookie: str, target: str) -> tuple[int, list[str]]:
    """Send a GET for ``target`` as raw bytes; return the status and the paths the portal got."""
    port = urlsplit(world.gateway_url).port
    assert port is not None
    seen = len(world.upstream_log.requests)
    raw = (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
        "Accept: text/html\r\nConnection: close\r\n\r\n"
    ).encode()
    answer = await raw_exchange(port, raw, timeout=5)
    status = int(answer.split(b" ", 2)[1])
    paths = [str(r["path"]) for r in world.upstream_log.requests[seen:]]
    return status, paths


@pytest.mark.parametrize(
    ("target", "status"), FOREIGN_SPELLINGS, ids=[t for t, _ in FOREIGN_SPELLINGS]
)
async def test_no_spelling_of_a_foreign_employer_reaches_the_portal(
    world: LoginWorld, cookie: str, target: str, status: int
) -> None:
    """Each spelling is refused with the row's status and the portal receives nothing."""
    got, reached = await _send(world, cookie, target)
    assert reached == [], f"{target} reached the portal as {reached}"
    assert got == status


@pytest.mark.parametrize("target", ALLOWED_SPELLINGS)
async def test_an_allowed_employer_is_forwarded_exactly_as_spelled(
    world: LoginWorld, cookie: str, target: str
) -> None:
    """Spellings of a permitted employer's page pass with the raw path and query unchanged."""
    got, reached = await _send(world, cookie, target)
    assert got == 200
    assert reached == [target]
