"""Proxying through real HTTP on loopback: hygiene, streaming, errors, websockets."""

from __future__ import annotations

import asyncio
import gzip
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.upstream_client import InvalidHeader, UpstreamClient
from tests.conftest import GatewayFactory
from tests.support.upstream import UpstreamLog


def _headers(record: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in record["headers"]}


async def test_forwards_request_and_response(gateway: GatewayFactory) -> None:
    """A public route forwards method, path and query, and returns the upstream's answer."""
    client = await gateway()
    resp = await client.post("/some/path?a=1&b=two", data=b"hello")
    assert resp.status == 200
    body = await resp.json()
    assert body["method"] == "POST"
    assert body["path"] == "/some/path?a=1&b=two"
    assert body["body_length"] == 5


async def test_hop_by_hop_and_connection_named_headers_removed(gateway: GatewayFactory) -> None:
    """Hop-by-hop headers and headers named in Connection never reach the upstream."""
    client = await gateway()
    resp = await client.get(
        "/echo",
        headers={
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "1",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic abc",
            "X-Normal": "kept",
        },
    )
    seen = _headers(await resp.json())
    for name in ("x-secret-hop", "keep-alive", "te", "proxy-authorization"):
        assert name not in seen
    assert seen["x-normal"] == "kept"


async def test_response_hop_by_hop_headers_removed(gateway: GatewayFactory) -> None:
    """Hop-by-hop headers in the upstream's answer never reach the client."""
    client = await gateway()
    resp = await client.get("/hop")
    assert "X-Internal-Hop" not in resp.headers
    assert "Keep-Alive" not in resp.headers
    assert resp.headers["Server-Timing"] == "db;dur=53"


async def test_identity_and_denied_headers_removed(gateway: GatewayFactory) -> None:
    """Client-sent identity headers and deny-listed headers are stripped; others pass."""
    client = await gateway(server={"deny_headers": ["X-Gateway-Identity", "X-Custom-Trust"]})
    resp = await client.get(
        "/echo",
        headers={
            "X-Gateway-Identity": "eyJhbGciOiJub25lIn0.forged.",
            "x-custom-trust": "admin",
            "X-Other": "fine",
        },
    )
    seen = _headers(await resp.json())
    assert "x-gateway-identity" not in seen
    assert "x-custom-trust" not in seen
    assert seen["x-other"] == "fine"


async def test_gateway_cookies_not_forwarded(gateway: GatewayFactory) -> None:
    """The gateway's own cookies are removed from Cookie; other cookies pass unchanged."""
    client = await gateway()
    resp = await client.get(
        "/echo",
        headers={"Cookie": "__Host-gw_session=secret; portal_pref=blue; gw_prelogin=x; lang=nl"},
    )
    seen = _headers(await resp.json())
    assert "secret" not in seen["cookie"]
    assert "gw_prelogin" not in seen["cookie"]
    assert "portal_pref=blue" in seen["cookie"]
    assert "lang=nl" in seen["cookie"]


async def test_only_gateway_cookies_means_no_cookie_header(gateway: GatewayFactory) -> None:
    """A Cookie header holding only gateway cookies is not forwarded at all."""
    client = await gateway()
    resp = await client.get("/echo", headers={"Cookie": "__Host-gw_session=secret"})
    assert "cookie" not in _headers(await resp.json())


async def test_upstream_cannot_set_gateway_cookie(gateway: GatewayFactory) -> None:
    """An upstream Set-Cookie for a gateway cookie is dropped; its own cookies pass."""
    client = await gateway()
    resp = await client.get("/set-cookie")
    cookies = resp.headers.getall("Set-Cookie")
    assert any(c.startswith("portal_pref=") for c in cookies)
    assert not any("gw_session" in c for c in cookies)


async def test_forwarded_headers_replaced_for_untrusted_client(gateway: GatewayFactory) -> None:
    """X-Forwarded-* and Forwarded from an untrusted client are replaced by what we saw."""
    client = await gateway()
    resp = await client.get(
        "/echo",
        headers={
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "https",
            "Forwarded": "for=6.6.6.6",
        },
    )
    seen = _headers(await resp.json())
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert "evil.example" not in seen["x-forwarded-host"]
    assert seen["forwarded"].startswith("for=127.0.0.1;proto=http;host=")


async def test_forwarded_headers_extended_for_trusted_proxy(gateway: GatewayFactory) -> None:
    """From a trusted proxy, the incoming chain is kept and the proxy's address appended."""
    client = await gateway(server={"trusted_proxies": ["127.0.0.0/8"]})
    resp = await client.get(
        "/echo",
        headers={
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Host": "portaal.fonds.nl",
            "X-Forwarded-Proto": "https",
        },
    )
    seen = _headers(await resp.json())
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-host"] == "portaal.fonds.nl"
    assert seen["x-forwarded-proto"] == "https"


async def test_request_id_kept_when_valid_and_generated_otherwise(gateway: GatewayFactory) -> None:
    """A valid incoming X-Request-ID is kept end to end; an invalid one is replaced."""
    client = await gateway()
    resp = await client.get("/echo", headers={"X-Request-ID": "abc12345-trace"})
    assert resp.headers["X-Request-ID"] == "abc12345-trace"
    assert _headers(await resp.json())["x-request-id"] == "abc12345-trace"
    resp = await client.get("/echo", headers={"X-Request-ID": "bad id with spaces"})
    generated = resp.headers["X-Request-ID"]
    assert generated != "bad id with spaces" and len(generated) == 32
    assert _headers(await resp.json())["x-request-id"] == generated


async def test_strip_prefix_and_base_path(gateway: GatewayFactory, upstream: TestServer) -> None:
    """strip_prefix is removed and the upstream's base path is put in front."""
    base = str(upstream.make_url("/legacy")).rstrip("/")
    client = await gateway(
        [
            {
                "name": "p",
                "match": {"path": "/portaal"},
                "upstream": base,
                "policy": "public",
                "strip_prefix": "/portaal",
            }
        ]
    )
    resp = await client.get("/portaal/werkgevers?x=1")
    assert (await resp.json())["path"] == "/legacy/werkgevers?x=1"


async def test_location_rewritten_to_public_address(
    gateway: GatewayFactory, upstream: TestServer
) -> None:
    """A redirect to the upstream's own address is rewritten to the public address."""
    base = str(upstream.make_url("/")).rstrip("/")
    client = await gateway(
        [
            {
                "name": "p",
                "match": {"path": "/portaal"},
                "upstream": base,
                "policy": "public",
                "strip_prefix": "/portaal",
            }
        ],
        server={"public_url": "https://portaal.fonds.nl"},
    )
    resp = await client.get("/portaal/redirect", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "https://portaal.fonds.nl/portaal/landing?x=1"


async def test_redirects_not_followed_and_foreign_location_kept(gateway: GatewayFactory) -> None:
    """The gateway never follows redirects; a Location elsewhere passes unchanged."""
    client = await gateway()
    resp = await client.get("/redirect?to=/elsewhere", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"].endswith("/elsewhere")


async def test_compressed_body_passes_untouched(gateway: GatewayFactory) -> None:
    """The gateway does not decompress: gzip bytes and Content-Encoding reach the client."""
    client = await gateway()
    resp = await client.get("/gzip", auto_decompress=False)
    assert resp.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await resp.read()) == b"hello compressed world" * 10


async def test_upstream_cookies_not_shared_between_clients(gateway: GatewayFactory) -> None:
    """An upstream cookie set for one client is never replayed for another (no shared jar)."""
    client = await gateway()
    await client.get("/set-cookie")
    client.session.cookie_jar.clear()  # from here on we are another browser
    resp = await client.get("/echo", headers={"Cookie": "lang=nl"})
    assert _headers(await resp.json())["cookie"] == "lang=nl"


async def test_no_route_is_404_page(gateway: GatewayFactory) -> None:
    """A request that matches no route gets the gateway's bilingual 404 page."""
    client = await gateway([{"name": "only", "match": {"path": "/only"}, "policy": "public"}])
    resp = await client.get("/elsewhere")
    assert resp.status == 404
    text = await resp.text()
    assert "Pagina niet gevonden" in text and "Page not found" in text
    assert resp.headers["X-Request-ID"] in text


async def test_method_not_on_route_is_405(gateway: GatewayFactory) -> None:
    """A path that matches only for other methods answers 405."""
    client = await gateway(
        [{"name": "ro", "match": {"path": "/ro", "methods": ["GET"]}, "policy": "public"}]
    )
    assert (await client.get("/ro")).status == 200
    assert (await client.delete("/ro")).status == 405


async def test_reserved_prefix_never_proxied(
    gateway: GatewayFactory, upstream_log: UpstreamLog
) -> None:
    """Paths under the reserved prefix are the gateway's own, never forwarded."""
    client = await gateway()
    resp = await client.get("/_gateway/anything")
    assert resp.status == 404
    assert upstream_log.requests == []


async def test_unsafe_paths_refused(gateway: GatewayFactory, upstream_log: UpstreamLog) -> None:
    """Encoded slashes and dot segments are refused rather than forwarded."""
    client = await gateway()
    for path in ("/a/%2e%2e/b", "/a%2Fb", "/a//b", "/a/..%5cb", "/a/../b"):
        status = await _raw_get_status(client.port, path)  # bypass client-side normalising
        assert status == 400, path
    assert upstream_log.requests == []


async def _raw_get_status(port: int | None, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(status_line.split()[1])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_upstream_refused_is_502(gateway: GatewayFactory) -> None:
    """An unreachable upstream gives a 502 page; JSON clients get JSON."""
    dead = f"http://127.0.0.1:{_closed_port()}"
    client = await gateway(
        [{"name": "dead", "match": {"path": "/"}, "upstream": dead, "policy": "public"}]
    )
    resp = await client.get("/x")
    assert resp.status == 502
    assert "Portaal niet bereikbaar" in await resp.text()
    resp = await client.get("/x", headers={"Accept": "application/json"})
    assert resp.status == 502
    body = await resp.json()
    assert body["error"] == "upstream_unavailable"
    assert "Traceback" not in str(body)


async def test_upstream_timeout_is_504(gateway: GatewayFactory) -> None:
    """An upstream slower than the read timeout gives a 504 page."""
    client = await gateway(
        [{"name": "slow", "match": {"path": "/"}, "policy": "public", "timeouts": {"read": 0.2}}]
    )
    resp = await client.get("/slow?seconds=3")
    assert resp.status == 504
    assert "Portaal reageert niet" in await resp.text()


async def test_declared_body_too_large_is_413(
    gateway: GatewayFactory, upstream_log: UpstreamLog
) -> None:
    """A Content-Length over the route's limit is refused before anything is forwarded."""
    client = await gateway(
        [{"name": "small", "match": {"path": "/"}, "policy": "public", "max_body_bytes": 10}]
    )
    resp = await client.post("/echo", data=b"x" * 100)
    assert resp.status == 413
    assert upstream_log.requests == []


async def test_streamed_body_too_large_is_413(gateway: GatewayFactory) -> None:
    """A chunked body that grows past the limit is cut off with a 413."""
    client = await gateway(
        [{"name": "small", "match": {"path": "/"}, "policy": "public", "max_body_bytes": 1000}]
    )

    async def body() -> Any:
        for _ in range(50):
            yield b"y" * 100

    resp = await client.post("/upload", data=body())
    assert resp.status == 413


async def test_upload_streams_before_client_finishes(
    gateway: GatewayFactory, upstream_log: UpstreamLog
) -> None:
    """The upstream receives the first chunk while the client is still sending."""
    client = await gateway()
    finish = asyncio.Event()

    async def body() -> Any:
        yield b"a" * 1024
        await finish.wait()  # the client holds the rest back until the upstream saw chunk 1
        yield b"b" * 1024

    send = asyncio.create_task(client.post("/upload", data=body()))
    await asyncio.wait_for(upstream_log.first_chunk_seen.wait(), timeout=5)
    assert not send.done()
    finish.set()
    resp = await send
    assert (await resp.json())["received"] == 2048


async def test_download_streams_before_upstream_finishes(
    gateway: GatewayFactory, upstream_log: UpstreamLog
) -> None:
    """The client receives the first chunk while the upstream is still sending."""
    client = await gateway()
    resp = await client.get("/download")
    first = await asyncio.wait_for(resp.content.readexactly(len(b"first-chunk;")), timeout=5)
    assert first == b"first-chunk;"
    upstream_log.release_download.set()
    assert await resp.content.read() == b"rest"


async def test_large_download_passes_intact(gateway: GatewayFactory) -> None:
    """A multi-megabyte body streams through with the right length."""
    client = await gateway()
    size = 8 * 1024 * 1024 + 7
    resp = await client.get(f"/big?size={size}")
    total = 0
    async for chunk in resp.content.iter_any():
        total += len(chunk)
    assert total == size


async def test_websocket_passes_through_on_enabled_route(gateway: GatewayFactory) -> None:
    """Websocket upgrades are proxied both ways, with the subprotocol negotiated upstream."""
    client = await gateway(
        [{"name": "ws", "match": {"path": "/"}, "policy": "public", "websocket": True}]
    )
    async with client.ws_connect("/ws", protocols=("chat",)) as ws:
        assert ws.protocol == "chat"
        await ws.send_str("hallo")
        assert (await ws.receive_str()) == "echo:hallo"
        await ws.send_bytes(b"abc")
        assert (await ws.receive_bytes()) == b"cba"


async def test_websocket_target_is_forwarded_byte_for_byte(
    gateway: GatewayFactory, upstream_log: UpstreamLog
) -> None:
    """The websocket handshake reaches the upstream with the raw query (+, %23, %25 kept)."""
    client = await gateway(
        [{"name": "ws", "match": {"path": "/"}, "policy": "public", "websocket": True}]
    )
    target = "/ws?q=foo+bar&x=%23&y=100%25&z=caf%C3%A9"
    async with client.ws_connect(URL(target, encoded=True), protocols=("chat",)) as ws:
        await ws.send_str("hallo")
        assert (await ws.receive_str()) == "echo:hallo"
    assert upstream_log.requests[-1]["method"] == "WEBSOCKET"
    assert upstream_log.requests[-1]["path"] == target


async def test_websocket_refused_on_route_without_it(gateway: GatewayFactory) -> None:
    """Without websocket on the route, the Upgrade header is dropped and no socket opens."""
    client = await gateway()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws")
    assert info.value.status != 101


async def test_route_header_edits(gateway: GatewayFactory) -> None:
    """Configured request and response header edits are applied."""
    client = await gateway(
        [
            {
                "name": "edits",
                "match": {"path": "/"},
                "policy": "public",
                "request_headers": {"set": {"X-Tenant": "pme"}, "remove": ["X-Debug"]},
                "response_headers": {
                    "set": {"X-Frame-Options": "DENY"},
                    "remove": ["X-Powered-By"],
                },
            }
        ]
    )
    resp = await client.get("/hop", headers={"X-Debug": "1"})
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert "X-Powered-By" not in resp.headers
    resp = await client.get("/echo", headers={"X-Debug": "1"})
    seen = _headers(await resp.json())
    assert seen["x-tenant"] == "pme" and "x-debug" not in seen


async def test_no_client_library_defaults_are_added_upstream(gateway: GatewayFactory) -> None:
    """A request without User-Agent or Accept-Encoding gets neither aiohttp's UA nor gzip."""
    client = await gateway()
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    body = raw.split(b"\r\n\r\n", 1)[1]
    if b"\r\n" in body[:8]:  # chunked: keep it simple, the echo body is one chunk
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    import json

    seen = _headers(json.loads(body))
    assert "user-agent" not in seen
    assert seen["accept-encoding"] == "identity"


async def test_client_leaving_mid_download_is_not_an_error(
    gateway: GatewayFactory, upstream_log: UpstreamLog
) -> None:
    """A client that disconnects mid-body is logged as gone, not as a crash or upstream error."""
    from structlog.testing import capture_logs

    client = await gateway()
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(b"GET /download HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b"first-chunk;")
        writer.close()
        await writer.wait_closed()
        upstream_log.release_download.set()
        for _ in range(100):
            if any(e["event"] == "request_handled" for e in logs):
                break
            await asyncio.sleep(0.02)
    events = [e["event"] for e in logs]
    assert "request_crashed" not in events
    assert "upstream_failed_mid_body" not in events
    assert "request_handled" in events


@pytest.mark.parametrize(
    ("raised", "status", "code"),
    [
        (ValueError("a bug, not a header value"), 500, "internal_error"),
        (InvalidHeader("line break inside a request header"), 400, "bad_request"),
    ],
    ids=["bug-is-500", "header-value-is-400"],
)
async def test_only_a_header_value_the_head_cannot_carry_is_the_clients_fault(
    gateway: GatewayFactory,
    monkeypatch: pytest.MonkeyPatch,
    raised: Exception,
    status: int,
    code: str,
) -> None:
    """Only a header value the request head cannot carry is the client's fault (400); any
    other error inside the upstream call is the gateway's own: 500 and a logged traceback."""

    async def failing(*args: object, **kwargs: object) -> None:
        raise raised

    monkeypatch.setattr(UpstreamClient, "request", failing)
    client = await gateway(
        [
            {
                "name": "all",
                "match": {"path": "/"},
                "upstream": "http://127.0.0.1:9",
                "policy": "public",
            }
        ]
    )
    resp = await client.get("/x", headers={"Accept": "application/json"})
    assert resp.status == status
    assert (await resp.json())["error"] == code


async def test_one_connection_limit_covers_websockets_and_requests(
    gateway: GatewayFactory,
) -> None:
    """``server.upstream_pool_size`` bounds every upstream connection: an open websocket holds
    one of the places, so with one place a request waits (504 after the connect timeout)
    until the websocket closes."""
    client = await gateway(
        [
            {
                "name": "all",
                "match": {"path": "/"},
                "policy": "public",
                "websocket": True,
                "timeouts": {"connect": 0.5},
            }
        ],
        server={"upstream_pool_size": 1},
    )
    async with client.ws_connect("/ws") as ws:
        await ws.send_str("hallo")
        assert (await ws.receive_str()) == "echo:hallo"
        resp = await client.get("/x", headers={"Accept": "application/json"})
        assert resp.status == 504
        assert (await resp.json())["error"] == "upstream_timeout"
    resp = await client.get("/x")
    assert resp.status == 200
