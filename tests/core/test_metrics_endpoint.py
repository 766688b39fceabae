"""Who may read /_gateway/metrics, and where it is served."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from gateway.app import build_app
from gateway.metrics_endpoint import metrics_listener_address
from tests.conftest import GatewayFactory, make_config

TOKEN = "metrics-token-0123456789abcdef"


async def test_separate_listener_serves_metrics_and_the_main_one_does_not(
    gateway: GatewayFactory,
) -> None:
    """With metrics.port the metrics move to their own listener; the public port answers 404."""
    client = await gateway(metrics={"port": 0, "host": "127.0.0.1"})
    await client.get("/x")
    resp = await client.get("/_gateway/metrics")
    assert resp.status == 404
    host, port = metrics_listener_address(client.app)
    async with aiohttp.ClientSession() as http:
        for path in ("/_gateway/metrics", "/metrics"):
            async with http.get(f"http://{host}:{port}{path}") as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain")
                assert 'gateway_requests_total{method="GET",route="all",status="200"} 1.0' in (
                    await r.text()
                )
            async with http.get(f"http://{host}:{port}/x") as r:
                assert r.status == 404  # nothing else is served there


async def test_token_is_required_and_reread_when_the_file_changes(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    """A scrape needs the token in the file; a new token in the file applies at once."""
    token_file = tmp_path / "metrics.token"
    token_file.write_text(TOKEN + "\n")
    client = await gateway(metrics={"token_file": str(token_file)})
    assert (await client.get("/_gateway/metrics")).status == 401
    wrong = await client.get("/_gateway/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="gateway-metrics"'
    good = await client.get("/_gateway/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert good.status == 200 and "gateway_requests_total" in await good.text()
    token_file.write_text("a-rotated-token-0123456789\n")
    old = await client.get("/_gateway/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert old.status == 401
    new = await client.get(
        "/_gateway/metrics", headers={"Authorization": "Bearer a-rotated-token-0123456789"}
    )
    assert new.status == 200


async def test_vanished_token_file_fails_closed(gateway: GatewayFactory, tmp_path: Path) -> None:
    """If the token file disappears while running, scrapes get 503, never the metrics."""
    token_file = tmp_path / "metrics.token"
    token_file.write_text(TOKEN)
    client = await gateway(metrics={"token_file": str(token_file)})
    token_file.unlink()
    resp = await client.get("/_gateway/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 503
    assert "gateway_" not in await resp.text()


@pytest.mark.parametrize("content", [None, "short"])
def test_missing_or_short_token_file_stops_startup(tmp_path: Path, content: str | None) -> None:
    """A token file that is absent or shorter than 16 bytes is refused when the app is built."""
    token_file = tmp_path / "metrics.token"
    if content is not None:
        token_file.write_text(content)
    config = make_config(
        {
            "metrics": {"token_file": str(token_file)},
            "routes": [
                {
                    "name": "all",
                    "match": {"path": "/"},
                    "upstream": "http://127.0.0.1:9",
                    "policy": "public",
                }
            ],
        }
    )
    with pytest.raises((OSError, ValueError), match=r"metrics\.token"):
        build_app(config, configure_logs=False)
