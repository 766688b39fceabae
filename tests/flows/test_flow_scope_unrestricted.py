"""Mandate scopes: a mandate without scopes is unrestricted; one with scopes covers only those."""

from __future__ import annotations

from pathlib import Path

from tests.support.login_world import ADMIN, login_world, mandate


async def test_mandate_without_scopes_passes_a_scope_restricted_route(tmp_path: Path) -> None:
    """An employer whose mandate names no scopes may use a route that requires one."""
    mandates = [
        mandate(ADMIN, "30000010", "Kapsalon Knip"),  # no scopes: unrestricted
        mandate(ADMIN, "30000011", "Garage Vonk", scopes=["employees"]),
    ]
    async with login_world(tmp_path, mandates=mandates) as world:
        browser = world.browser()
        await world.login(browser, "direct")
        async with browser.get(world.url("/aangifte?werkgever=30000010")) as resp:
            assert resp.status == 200
        async with browser.get(world.url("/aangifte?werkgever=30000011")) as resp:
            assert resp.status == 403
