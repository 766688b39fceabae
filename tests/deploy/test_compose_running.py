"""The compose setup as a running system: every documented scenario logs in (or is refused).

No container engine runs here, so ``tests/support/compose_world.py`` starts
the compose services as plain processes from compose.yaml: the same gateway
and simulator files, the same mandate and scenario files, keys made by the
``keys`` service's own script, a real redis-server. The expectations are the
table in docs/deploy.md ("What each scenario shows"), read from the document,
so the documentation and this test cannot drift apart.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from gateway_dev.simulator.settings import load_scenarios
from tests.support.compose_world import ComposeWorld
from tests.support.deploy import CONFIG_DIR, REPO
from tests.support.login_world import follow_redirects, login_by_form
from tests.support.tokens import IdentityVerifier

DOC = REPO / "docs" / "deploy.md"


@dataclass(frozen=True)
class Expectation:
    """One row of the documented table."""

    scenario: str
    office: str | None
    status: int
    title: str | None = None
    mode: str | None = None
    employers: frozenset[str] = frozenset()
    picks: str | None = None
    """The employer picked on the gateway's client list before the portal, if any."""


def _documented() -> list[Expectation]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("### What each scenario shows", 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        scenario, office, outcome = cells
        picks = outcome.startswith("*Uw klanten* (pick one), then ")
        outcome = outcome.removeprefix("*Uw klanten* (pick one), then ")
        portal = re.fullmatch(r"the portal: `mode` (\w+), employers ([0-9 ]+)( \(.*\))?", outcome)
        refused = re.fullmatch(r"(\d{3}) \*(.+)\*", outcome)
        assert portal or refused, f"docs/deploy.md: cannot read {line!r}"
        rows.append(
            Expectation(
                scenario=scenario.strip("`"),
                office=office if office.isdigit() else None,
                status=200 if portal else int(refused[1]),  # type: ignore[index]
                title=refused[2] if refused else None,
                mode=portal[1] if portal else None,
                employers=frozenset(portal[2].split()) if portal else frozenset(),
                picks=portal[2].split()[0] if portal and picks else None,
            )
        )
    return rows


DOCUMENTED = _documented()


def test_the_table_covers_every_example_scenario() -> None:
    """Every scenario of config/scenarios.example.yaml has a row, and only those."""
    ids = {s.id for s in load_scenarios(CONFIG_DIR / "scenarios.example.yaml")}
    assert {e.scenario for e in DOCUMENTED} == ids


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeWorld]:
    world = ComposeWorld(tmp_path_factory.mktemp("compose"))
    try:
        asyncio.run(world.start())
        yield world
    finally:
        world.stop()


@pytest.mark.parametrize("expected", DOCUMENTED, ids=[e.scenario for e in DOCUMENTED])
async def test_each_documented_scenario_ends_where_the_docs_say(
    world: ComposeWorld, expected: Expectation
) -> None:
    """A login through the simulator ends on the portal with the documented token, or refused."""
    gateway = world.url("gateway")
    jar = aiohttp.CookieJar(unsafe=True)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(cookie_jar=jar, timeout=timeout) as browser:
        final, page = await login_by_form(browser, gateway + "/", expected.scenario)
        assert final.status == expected.status, page[:3000]
        if expected.title is not None:
            assert expected.title in page
            return
        if expected.picks is not None:
            final, page = await _pick(browser, final, page, expected.picks)
        assert "Voorbeeldportaal" in page, "the sample portal's page"
        assert str(final.url).startswith(gateway)
        async with browser.get(gateway + "/api/headers") as echo:
            assert echo.status == 200
            headers = dict((await echo.json())["headers"])
    _, data = world.gateway_config()
    token = headers["X-Gateway-Identity"]
    verifier = IdentityVerifier(
        gateway + "/.well-known/jwks.json", issuer=data["tokens"]["issuer"], audience="portal"
    )
    # The issuer in the file is the compose URL; the test world serves it on loopback.
    verifier.issuer = world._address(data["tokens"]["issuer"])
    claims = await asyncio.to_thread(verifier.verify, token)
    assert claims["mode"] == expected.mode
    if expected.picks is not None:
        assert claims["act_employer"]["kvk"] == expected.picks
    assert claims["org"]["kvk"] == expected.office
    assert {e["kvk"] for e in claims["employers"]} == expected.employers


async def _pick(
    browser: aiohttp.ClientSession, overview: aiohttp.ClientResponse, page: str, kvk: str
) -> tuple[aiohttp.ClientResponse, str]:
    """Choose ``kvk`` on the gateway's client list, as a person clicks its button."""
    assert "Uw klanten" in page, page[:3000]
    forms = re.findall(r'<form method="post" action="([^"]+)">(.*?)</form>', page, re.DOTALL)
    action, body = next(f for f in forms if f'name="kvk" value="{kvk}"' in f[1])
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', body))
    target = str(overview.url.join(URL(html.unescape(action))))
    post = await browser.post(target, data=fields, allow_redirects=False)
    assert post.status == 303, await post.text()
    location = str(post.url.join(URL(post.headers["Location"])))
    await post.release()
    final, _ = await follow_redirects(browser, location)
    return final, await final.text()


def test_keys_and_configs_are_the_shipped_ones(world: ComposeWorld) -> None:
    """The running gateway uses compose's gateway.yaml with only addresses and paths mapped."""
    path, data = world.gateway_config()
    assert path.is_relative_to(world.root)
    assert data["sessions"]["ref_secret_file"].startswith(str(world.root))
    assert Path(data["tokens"]["keys"]["current"]).is_file()
    assert data["mandates"]["source"]["path"].endswith("/etc/gateway/mandates.yaml")
    mounted = Path(data["mandates"]["source"]["path"]).read_text()
    assert mounted == (CONFIG_DIR / "mandates.example.yaml").read_text()
