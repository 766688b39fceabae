"""An administration office with 10,000 clients: the compact token, the full set, the overview.

One login world and one logged-in browser serve the module (a 10,000-employer
session is built once).
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.support.login_world import ADMIN, LoginWorld, login_world
from tests.support.tokens import IdentityVerifier, employers_digest

pytestmark = pytest.mark.asyncio(loop_scope="module")

COUNT = 10_000
HEADER_LIMIT = 8 * 1024


def _kvk(i: int) -> str:
    return f"{40_000_000 + i:08d}"


def _fund(i: int) -> str:
    return f"F{700_000 + i}"


def _write_registry_csv(path: Path) -> None:
    """The 10,000 mandates as the documented CSV (parsing YAML this size takes seconds)."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        fields = "administrator_kvk employer_kvk employer_name fund_employer_number"
        out.writerow([*fields.split(), "status", "valid_from", "scopes"])
        for i in range(COUNT):
            scopes = "declarations" if i % 2 else "declarations employees"
            out.writerow(
                [
                    ADMIN,
                    _kvk(i),
                    f"Werkgever {i:05d} B.V.",
                    _fund(i),
                    "active",
                    "2020-01-01",
                    scopes,
                ]
            )


@dataclass
class Office:
    world: LoginWorld
    browser: aiohttp.ClientSession


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def office(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Office]:
    directory = tmp_path_factory.mktemp("large")
    registry = directory / "mandates.csv"
    _write_registry_csv(registry)
    async with login_world(
        directory, mandate_settings={"source": {"kind": "file", "path": str(registry)}}
    ) as world:
        browser = world.browser()
        resp, hops = await world.login(browser, "direct")
        assert resp.status == 200
        assert hops[-1].endswith("/_gateway/employers")
        yield Office(world, browser)


async def _json(office: Office, query: str) -> dict[str, Any]:
    async with office.browser.get(
        office.world.url("/_gateway/employers" + query), headers={"Accept": "application/json"}
    ) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def test_large_set_token_stays_small_and_backend_gets_the_full_set(office: Office) -> None:
    """At 10,000 employers the header stays under 8 KiB and the documented fetch returns all."""
    world = office.world
    async with office.browser.get(world.url("/dashboard")) as resp:
        assert resp.status == 200
    token = world.upstream_headers()["x-gateway-identity"][0]
    assert len(b"X-Gateway-Identity: " + token.encode()) < HEADER_LIMIT

    verifier = IdentityVerifier(
        jwks_url=world.url("/.well-known/jwks.json"), issuer=world.gateway_url, audience="portal"
    )
    claims = await world.verify(token, "portal")
    assert "employers" not in claims
    assert claims["employers_count"] == COUNT
    assert claims["employers_uri"] == world.url("/_gateway/api/employers")
    async with aiohttp.ClientSession() as backend:
        employers = await verifier.employer_set_async(backend, token, claims)
    assert len(employers) == COUNT
    assert employers_digest(employers) == claims["employers_digest"]
    assert {e["kvk"] for e in employers} == {_kvk(i) for i in range(COUNT)}
    by_kvk = {e["kvk"]: e for e in employers}  # tokens.employer_ids defaults to kvk only
    assert by_kvk[_kvk(7)]["scopes"] == ["declarations"]
    assert by_kvk[_kvk(8)]["scopes"] == ["declarations", "employees"]


async def test_employers_endpoint_refuses_without_a_valid_token(office: Office) -> None:
    """The full set is only given for a genuine token; a tampered one gets 401."""
    world = office.world
    async with office.browser.get(world.url("/dashboard")) as resp:
        assert resp.status == 200
    token = world.upstream_headers()["x-gateway-identity"][0]
    head, body, signature = token.split(".")
    tampered = f"{head}.{body}.{signature[::-1]}"
    async with aiohttp.ClientSession() as backend:
        for headers in ({}, {"Authorization": f"Bearer {tampered}"}):
            async with backend.get(world.url("/_gateway/api/employers"), headers=headers) as resp:
                assert resp.status == 401


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("werkgever 04242", _kvk(4242)),  # name, any case
        (_kvk(9876), _kvk(9876)),  # KvK number
        (_fund(1234), _kvk(1234)),  # fund number
    ],
    ids=["name", "kvk", "fund-number"],
)
async def test_overview_search_finds_one_client_among_10000(
    office: Office, query: str, expected: str
) -> None:
    """Searching by name, KvK number or fund number finds the client."""
    body = await _json(office, f"?q={query.replace(' ', '+')}")
    assert body["total"] == 1
    assert [e["kvk"] for e in body["employers"]] == [expected]


async def test_overview_pages_through_10000_clients(office: Office) -> None:
    """Paging: page 2 holds the next 50 clients, and the HTML page links both ways."""
    first, second = await _json(office, "?page=1"), await _json(office, "?page=2")
    assert first["total"] == second["total"] == COUNT
    assert second["page"] == 2 and second["pages"] == COUNT // first["page_size"]
    assert len(second["employers"]) == first["page_size"]
    assert not {e["kvk"] for e in first["employers"]} & {e["kvk"] for e in second["employers"]}
    last = await _json(office, "?page=999999")
    assert last["page"] == last["pages"]

    async with office.browser.get(office.world.url("/_gateway/employers?page=2")) as resp:
        assert resp.status == 200
        page = await resp.text()
    assert f"Pagina 2 van {COUNT // 50}" in page
    assert "page=1" in page and "page=3" in page
    assert page.count("<tr") == 51  # header row + 50 clients
