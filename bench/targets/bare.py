"""The baseline: the least a correct aiohttp reverse proxy does, on asyncio's loop and on uvloop.

One pooled client session, streamed bodies, hop-by-hop headers dropped,
nothing more (no access log, no routing, no checks). It runs twice, on
asyncio's own loop (aiohttp's default) and on uvloop (the loop the gateway
uses when installed), so the event loop alone cannot explain a ratio.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from bench.harness import free_port, wait_http
from bench.targets import Env, Row, Target

BARE_PROXY = """
import sys
import aiohttp
from aiohttp import web
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate"}
UP = sys.argv[2]
async def handler(request):
    session = request.app["session"]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    async with session.request(request.method, UP + request.path_qs, headers=headers,
                               data=request.content if request.body_exists else None,
                               allow_redirects=False) as up:
        resp = web.StreamResponse(status=up.status)
        for k, v in up.headers.items():
            if k.lower() not in HOP:
                resp.headers.add(k, v)
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp
async def ctx(app):
    app["session"] = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                           auto_decompress=False)
    yield
    await app["session"].close()
app = web.Application()
app.cleanup_ctx.append(ctx)
app.router.add_route("*", "/{tail:.*}", handler)
if sys.argv[3:] == ["uvloop"]:
    import uvloop
    uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


@dataclass
class BareProxy(Target):
    uvloop: bool = False

    def start(self, env: Env) -> None:
        folder = env.folder(self.name)
        script = folder / "bare.py"
        script.write_text(BARE_PROXY)
        port = free_port()
        cmd = [sys.executable, str(script), str(port), env.upstream_url]
        if self.uvloop:
            cmd.append("uvloop")
        log = folder / "output.log"
        proc = env.processes.start(env.server_cmd(cmd), log=log)
        self.base_url = f"http://127.0.0.1:{port}"
        wait_http(self.base_url + "/", proc=proc, log=log)
        self._pids = [proc.pid]


def targets() -> list[Target]:
    return [
        BareProxy(name="bare", rows=(Row("bare", "bare aiohttp proxy", "bare", "page"),)),
        BareProxy(
            name="bare-uvloop",
            uvloop=True,
            rows=(Row("bare-uvloop", "bare aiohttp proxy on uvloop", "bare-uvloop", "page"),),
        ),
    ]
