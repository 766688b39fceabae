"""Large employer sets: the header stays under the limit and backends still get the exact set."""

from __future__ import annotations

import asyncio
import urllib.error
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import jwt
import pytest

from gateway.tokens import TokenSubject, build_claims
from tests.support.tokens import check_employers_document, employers_digest

if TYPE_CHECKING:
    from tests.tokens.conftest import TokenGateway

StartGateway = Callable[..., Awaitable["TokenGateway"]]
SubjectFactory = Callable[..., TokenSubject]


def _header_lines(name: str, token: str) -> list[int]:
    """Byte length of the header line in both forms a route can choose."""
    return [
        len(f"{name}: {token}\r\n".encode()),
        len(f"Authorization: Bearer {token}\r\n".encode()),
    ]


async def test_ten_thousand_employers_reach_the_backend_intact(
    token_gateway: StartGateway, make_subject: SubjectFactory
) -> None:
    """At 10,000 employers the header stays under 8 KiB and a backend rebuilds the exact set."""
    gw = await token_gateway(employer_ids="both")
    subject = make_subject(10_000, active="10004242")
    token = gw.mint(subject)
    assert max(_header_lines(gw.settings.header_name, token)) <= gw.settings.max_header_bytes

    verifier = gw.verifier()
    claims = await asyncio.to_thread(verifier.verify, token)
    assert "employers" not in claims
    assert claims["employers_count"] == 10_000
    assert claims["employers_uri"] == gw.url + "/_gateway/api/employers"
    assert claims["act_employer"] == {
        "kvk": "10004242",
        "fund_number": "F004242",
        "scopes": ["contributions"],
    }

    employers = await asyncio.to_thread(verifier.employer_set, token, claims)
    expected = {(e.kvk, e.fund_number, tuple(sorted(e.scopes))) for e in subject.allowed}
    got = {(e["kvk"], e["fund_number"], tuple(e["scopes"])) for e in employers}
    assert len(employers) == 10_000
    assert got == expected
    assert employers[0]["name"] == "Werkgever 0 B.V."

    # The same through an aiohttp backend.
    async with aiohttp.ClientSession() as http:
        again = await verifier.employer_set_async(http, token, claims)
    assert again == employers


@pytest.mark.parametrize("n", [1, 60, 120, 140, 180, 400])
async def test_substitute_only_when_the_list_does_not_fit(
    token_gateway: StartGateway, make_subject: SubjectFactory, n: int
) -> None:
    """Sets that fit travel in the token; the substitute appears exactly when they would not."""
    gw = await token_gateway()
    token = gw.mint(make_subject(n))
    claims = jwt.decode(token, options={"verify_signature": False})
    assert len(token) <= gw.settings.token_budget
    inline = build_claims(
        make_subject(n), "portal", claims["iat"], settings=gw.settings, jti=claims["jti"]
    )
    inline_token = jwt.encode(
        inline, gw.keys.signing_key, algorithm="ES256", headers={"kid": gw.keys.kid}
    )
    fits = len(inline_token) <= gw.settings.token_budget
    assert ("employers" in claims) is fits
    if fits:
        assert len(claims["employers"]) == n


async def test_fetch_after_the_set_changed_is_refused(
    token_gateway: StartGateway, make_subject: SubjectFactory
) -> None:
    """A token for an older set cannot fetch the newer set (409); an ended session gets 401."""
    gw = await token_gateway()
    token = gw.mint(make_subject(1000))
    verifier = gw.verifier()
    claims = await asyncio.to_thread(verifier.verify, token)
    gw.subjects["sess-ref-1"] = make_subject(1001)
    with pytest.raises(urllib.error.HTTPError) as changed:
        await asyncio.to_thread(verifier.employer_set, token, claims)
    assert changed.value.code == 409
    changed.value.close()
    del gw.subjects["sess-ref-1"]
    with pytest.raises(urllib.error.HTTPError) as ended:
        await asyncio.to_thread(verifier.employer_set, token, claims)
    assert ended.value.code == 401
    ended.value.close()


async def test_employers_endpoint_refuses_foreign_tokens(
    token_gateway: StartGateway, make_subject: SubjectFactory
) -> None:
    """The employers endpoint answers 401 to a token it did not issue."""
    gw = await token_gateway()
    other = await token_gateway()
    token = other.mint(make_subject(1000))
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            gw.url + "/_gateway/api/employers", headers={gw.settings.header_name: token}
        ) as response,
    ):
        assert response.status == 401


def test_backend_refuses_a_document_the_token_does_not_vouch_for() -> None:
    """The documented backend checks reject a wrong session, count or digest."""
    entries: list[dict[str, Any]] = [{"kvk": "11111111"}, {"kvk": "22222222"}]
    claims = {"sid": "s", "employers_count": 2, "employers_digest": employers_digest(entries)}
    assert check_employers_document({"sid": "s", "employers": entries}, claims) == entries
    bad_documents = [
        {"sid": "other", "employers": entries},
        {"sid": "s", "employers": entries[:1]},
        {"sid": "s", "employers": [entries[0], {"kvk": "66666666"}]},
    ]
    for document in bad_documents:
        with pytest.raises(ValueError, match=r"session|count|digest"):
            check_employers_document(document, claims)
