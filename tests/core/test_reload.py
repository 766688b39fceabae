"""Reloading the routes file while serving: valid files apply, invalid ones are refused."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from gateway.app import build_app
from gateway.config import load_config
from gateway.metrics import METRICS
from gateway.runtime import RUNTIME
from tests.support.upstream import UpstreamLog

Client = TestClient[web.Request, web.Application]


def _write(path: Path, routes: list[dict[str, object]], poll: float = 0) -> None:
    path.write_text(yaml.safe_dump({"server": {"config_poll_seconds": poll}, "routes": routes}))


async def _gateway_from_file(
    aiohttp_client: Callable[..., Awaitable[Client]], path: Path
) -> Client:
    return await aiohttp_client(
        build_app(load_config(path, {}), config_path=path, environ={}, configure_logs=False)
    )


async def test_valid_reload_switches_routes(
    tmp_path: Path, upstream: TestServer, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    """After a reload (what SIGHUP does) with a valid file, new requests use the new routes."""
    base = str(upstream.make_url("/")).rstrip("/")
    cfg = tmp_path / "routes.yaml"
    _write(cfg, [{"name": "a", "match": {"path": "/a"}, "upstream": base, "policy": "public"}])
    client = await _gateway_from_file(aiohttp_client, cfg)
    assert (await client.get("/b")).status == 404
    _write(cfg, [{"name": "b", "match": {"path": "/b"}, "upstream": base, "policy": "public"}])
    runtime = client.app[RUNTIME]
    assert runtime.reload(client.app[METRICS]) is True
    assert (await client.get("/b")).status == 200
    assert (await client.get("/a")).status == 404
    assert runtime.current.number == 2


async def test_invalid_reload_keeps_old_routes_and_logs_problems(
    tmp_path: Path, upstream: TestServer, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    """An invalid new file is refused, its problems logged, and the old routes keep serving."""
    base = str(upstream.make_url("/")).rstrip("/")
    cfg = tmp_path / "routes.yaml"
    _write(cfg, [{"name": "a", "match": {"path": "/a"}, "upstream": base, "policy": "public"}])
    client = await _gateway_from_file(aiohttp_client, cfg)
    cfg.write_text("routes:\n  - name: a\n    match: {path: /a}\n    upstrem: x\n")
    with capture_logs() as logs:
        assert client.app[RUNTIME].reload(client.app[METRICS]) is False
    (event,) = [e for e in logs if e["event"] == "config_reload_rejected"]
    assert any("upstrem" in p for p in event["problems"])
    assert (await client.get("/a")).status == 200
    metrics = await (await client.get("/_gateway/metrics")).text()
    assert 'gateway_config_reloads_total{result="rejected"} 1.0' in metrics


async def test_file_change_is_picked_up_by_watcher(
    tmp_path: Path, upstream: TestServer, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    """Changing the file on disk reloads it without a signal."""
    base = str(upstream.make_url("/")).rstrip("/")
    cfg = tmp_path / "routes.yaml"
    _write(
        cfg, [{"name": "a", "match": {"path": "/a"}, "upstream": base, "policy": "public"}], 0.05
    )
    client = await _gateway_from_file(aiohttp_client, cfg)
    _write(
        cfg, [{"name": "c", "match": {"path": "/c"}, "upstream": base, "policy": "public"}], 0.05
    )
    for _ in range(100):
        if (await client.get("/c")).status == 200:
            break
        await asyncio.sleep(0.05)
    assert (await client.get("/c")).status == 200


async def test_in_flight_request_finishes_on_old_routes(
    tmp_path: Path,
    upstream: TestServer,
    upstream_log: UpstreamLog,
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    """A request that started before a reload completes against the route it matched."""
    base = str(upstream.make_url("/")).rstrip("/")
    cfg = tmp_path / "routes.yaml"
    _write(cfg, [{"name": "old", "match": {"path": "/"}, "upstream": base, "policy": "public"}])
    client = await _gateway_from_file(aiohttp_client, cfg)
    # The upstream sends its first chunk and holds the rest until released: the
    # request is under way (its headers are back) when the reload happens.
    pending = await client.get("/download")
    assert pending.status == 200
    _write(cfg, [{"name": "new", "match": {"path": "/new"}, "upstream": base, "policy": "public"}])
    assert client.app[RUNTIME].reload(client.app[METRICS])
    upstream_log.release_download.set()
    assert await pending.read() == b"first-chunk;rest"
    assert (await client.get("/download")).status == 404
