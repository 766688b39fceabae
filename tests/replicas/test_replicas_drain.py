"""One gateway process on SIGTERM, as a load balancer and its clients see it (raw HTTP/1.1)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestServer

from tests.support.processes import GatewayProcess, free_port

pytestmark = pytest.mark.slow

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _get(conn: Conn, path: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = conn
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    await writer.drain()
    status = int((await reader.readuntil(b"\r\n")).split(b" ")[1])
    headers = {}
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


async def _closed_by_server(conn: Conn) -> bool:
    return await asyncio.wait_for(conn[0].read(1), timeout=15) == b""


async def test_sigterm_drains_keep_alive_clients_and_finishes_in_flight(
    tmp_path: Path, upstream: TestServer
) -> None:
    """Draining: readiness 503, answers say Connection: close, idle and in-flight end cleanly."""
    port = free_port()
    cfg = tmp_path / "gateway.yaml"
    base = str(upstream.make_url("/")).rstrip("/")
    route = {"name": "all", "match": {"path": "/"}, "upstream": base, "policy": "public"}
    server = {
        "port": port,
        "config_poll_seconds": 0,
        "drain_delay_seconds": 1.0,
        "shutdown_grace_seconds": 10,
    }
    cfg.write_text(yaml.safe_dump({"server": server, "routes": [route]}))
    gw = GatewayProcess(["serve", "--config", str(cfg)])
    conns: list[Conn] = []

    async def connect() -> Conn:
        conns.append(await asyncio.open_connection("127.0.0.1", port))
        return conns[-1]

    try:
        await gw.wait_http(f"http://127.0.0.1:{port}/_gateway/readyz")
        busy, idle = await connect(), await connect()
        for conn in (busy, idle):
            status, headers, _ = await _get(conn, "/echo")
            assert status == 200 and headers.get("connection") != "close"
        # In flight across the whole drain and the shutdown that follows it.
        slow = asyncio.create_task(_get(await connect(), "/slow?seconds=2&tag=inflight"))
        await asyncio.sleep(0.2)

        gw.signal(signal.SIGTERM)
        for _ in range(50):
            # A new connection per check, as a load balancer's health check does.
            status, headers, _ = await _get(await connect(), "/_gateway/readyz")
            if status == 503:
                break
            await asyncio.sleep(0.02)
        assert status == 503  # the load balancer's cue to stop sending new connections

        status, headers, _ = await _get(busy, "/echo")  # a keep-alive client during the drain
        assert status == 200
        assert headers["connection"] == "close"
        assert await _closed_by_server(busy)
        late = await connect()  # a new connection the load balancer sent before it noticed
        status, headers, _ = await _get(late, "/echo")
        assert (status, headers["connection"]) == (200, "close")

        assert await _closed_by_server(idle)  # idle keep-alive: closed when the drain ends
        status, _, body = await slow
        assert (status, body) == (200, b"slow done inflight")
        assert await gw.wait_exit() == 0
    finally:
        for _, writer in conns:
            writer.close()
        gw.stop()
