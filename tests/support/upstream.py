"""A real HTTP application that stands in for the legacy portal in proxy tests.

It reports what it received (``/echo``), and can be slow, stream, redirect,
set cookies, compress and speak websocket, so each proxy behaviour is shown
against real HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web


@dataclass
class UpstreamLog:
    """What the upstream saw, for tests to assert on."""

    requests: list[dict[str, object]] = field(default_factory=list)
    first_chunk_seen: asyncio.Event = field(default_factory=asyncio.Event)
    release_download: asyncio.Event = field(default_factory=asyncio.Event)
    upload_bytes: int = 0


UPSTREAM_LOG = web.AppKey("upstream_log", UpstreamLog)


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    record = {
        "method": request.method,
        "path": request.raw_path,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_length": len(body),
        "host": request.host,
    }
    request.app[UPSTREAM_LOG].requests.append(record)
    return web.json_response(record)


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("seconds", "2")))
    return web.Response(text=f"slow done {request.query.get('tag', '')}")


async def upload(request: web.Request) -> web.Response:
    """Count an uploaded body, flagging the first chunk as soon as it arrives."""
    log = request.app[UPSTREAM_LOG]
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
        log.first_chunk_seen.set()
    log.upload_bytes = total
    return web.json_response({"received": total})


async def download(request: web.Request) -> web.StreamResponse:
    """Send one chunk, wait until the test says so, then send the rest."""
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(b"first-chunk;")
    await request.app[UPSTREAM_LOG].release_download.wait()
    await resp.write(b"rest")
    await resp.write_eof()
    return resp


async def big(request: web.Request) -> web.StreamResponse:
    """Stream ``size`` bytes in 64 KiB chunks."""
    size = int(request.query.get("size", str(1024 * 1024)))
    resp = web.StreamResponse()
    resp.content_length = size
    await resp.prepare(request)
    chunk = b"x" * 65536
    left = size
    while left > 0:
        n = min(left, len(chunk))
        await resp.write(chunk[:n])
        left -= n
    await resp.write_eof()
    return resp


async def redirect(request: web.Request) -> web.Response:
    base = f"http://{request.host}"
    target = request.query.get("to", "/landing?x=1")
    raise web.HTTPFound(base + target)


async def set_cookie(request: web.Request) -> web.Response:
    resp = web.Response(text="cookies set")
    resp.set_cookie("portal_pref", "blue")
    resp.set_cookie("__Host-gw_session", "stolen", path="/", secure=True)
    return resp


async def compressed(request: web.Request) -> web.Response:
    body = gzip.compress(b"hello compressed world" * 10)
    return web.Response(
        body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
    )


async def hop_headers(request: web.Request) -> web.Response:
    """Answer with hop-by-hop headers that must not reach the client."""
    return web.Response(
        text="ok",
        headers={
            "Connection": "X-Internal-Hop",
            "X-Internal-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "X-Powered-By": "legacy",
            "Server-Timing": "db;dur=53",
        },
    )


async def websocket(request: web.Request) -> web.WebSocketResponse:
    request.app[UPSTREAM_LOG].requests.append(
        {"method": "WEBSOCKET", "path": request.raw_path, "headers": list(request.headers.items())}
    )
    ws = web.WebSocketResponse(protocols=("chat",))
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str("echo:" + msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data[::-1])
    return ws


def build_upstream_app() -> web.Application:
    app = web.Application(client_max_size=1024**3)
    app[UPSTREAM_LOG] = UpstreamLog()
    app.router.add_route("*", "/slow", slow)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_get("/big", big)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/set-cookie", set_cookie)
    app.router.add_get("/gzip", compressed)
    app.router.add_get("/hop", hop_headers)
    app.router.add_get("/ws", websocket)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app
