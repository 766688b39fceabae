"""Proxy throughput: direct, a bare aiohttp proxy, the gateway (public and authenticated).

Run: ``./dev bench proxy`` (or ``.venv/bin/python -m bench proxy``).
Needs ``wrk`` (Debian package; ``./dev bench`` installs it). All targets run side by side in one
run against the same upstream, so the ratios are comparable even though
absolute numbers depend on the machine. Each server is one process, like one
gateway worker; wrk uses one thread and keep-alive connections.

The bare proxy runs twice: on asyncio's own loop (aiohttp's default) and on
uvloop, the loop the gateway uses when installed, so the event loop alone
cannot explain a ratio.

Prints requests/s and p50/p99 latency per target, and the gateway's ratios to
the bare proxy (targets: >= 0.85 on a public route; >= 0.8 on an authenticated
route with a logged-in session on the Redis store, where every request loads
the session and carries a signed token).

The authenticated target runs a second gateway process configured with login
(keys generated here, broker metadata from a file, mandates from a file, a
real ``redis-server`` on a free port). Its session is created directly in
Redis with the gateway's own SessionManager (the login itself is measured by
``bench logins``), so wrk can send the session cookie.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support.redis import RedisServer

UPSTREAM = """
from aiohttp import web
async def ok(request):
    return web.Response(text="hello from the legacy portal " * 8)
app = web.Application()
app.router.add_route("*", "/{tail:.*}", ok)
web.run_app(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), access_log=None,
            print=None)
"""

# The baseline: the least a correct aiohttp reverse proxy does (one pooled
# session, streamed body, hop-by-hop headers dropped), nothing more.
BARE_PROXY = """
import sys
import aiohttp
from aiohttp import web
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate"}
UP = "http://127.0.0.1:" + sys.argv[2]
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
if sys.argv[3:] == ["uvloop"]:  # the event loop the gateway uses when installed
    import uvloop
    uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    cpu_us_per_request: float = float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback only
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(
    name: str, url: str, seconds: int, connections: int, headers: list[str], pid: int | None = None
) -> Result:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    for h in headers:
        cmd += ["-H", h]
    cpu_before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu_used = cpu_seconds(pid) - cpu_before if pid else float("nan")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errs = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(errs.group(1)) if errs else 0
    if sock:
        errors += sum(int(g) for g in sock.groups())
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    per_request = cpu_used / total * 1e6 if total else float("nan")
    return Result(name, rps, p50, p99, errors, total, per_request)


def prepare_authenticated(
    tmp: Path, port: int, up_port: int, redis_url: str, cache_seconds: float = 2.0
) -> tuple[Path, str]:
    """Write a login-enabled gateway config on Redis and create one session in Redis."""
    import asyncio

    from gateway.config import parse_config
    from gateway.identity import Employer, Identity, Loa
    from gateway.sessions import SessionManager
    from gateway.sessions.cookies import session_cookie_name
    from gateway.store.factory import create_store
    from tests.support.login_world import gateway_config
    from tests.support.saml import SamlWorld

    world = SamlWorld(tmp)
    metadata = tmp / "broker-metadata.xml"
    metadata.write_bytes(world.broker_metadata())
    mandates = tmp / "mandates.yaml"
    mandates.write_text("version: 1\nmandates: []\n")
    data = gateway_config(
        tmp,
        port,
        f"http://127.0.0.1:{up_port}",
        str(metadata),
        mandates,
        store={"url": redis_url},
        sessions={"cache_seconds": cache_seconds, "mandate_recheck_interval": 600},
        logging={"format": "json", "access_log": True},
    )
    data["saml"]["verify_pool"] = "thread"
    path = tmp / "gateway-auth.yaml"
    path.write_text(yaml.safe_dump(data))
    config = parse_config(path.read_text(), file=str(path), environ={})
    identity = Identity(
        acting_subject="bench-pseudonym",
        legal_subject_kvk="12345678",
        loa=Loa.EH3,
        service_id="urn:etoegang:DV:00000001234567890000:services:0",
        login_time=dt.datetime.now(dt.UTC),
        legal_subject_name="Administratiekantoor Bench",
    )
    allowed = [Employer(kvk=f"3{i:07d}", name=f"Werkgever {i}") for i in range(25)]

    async def create() -> str:
        store = create_store(config.store)
        manager = SessionManager(
            store, config.sessions, ref_secret=config.sessions.load_ref_secret()
        )
        session = await manager.create(identity, allowed)
        await store.close()
        return session.id

    session_id = asyncio.run(create())
    return path, f"{session_cookie_name(config.sessions)}={session_id}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; best kept")
    parser.add_argument(
        "--session-cache",
        type=float,
        default=2.0,
        help="sessions.cache_seconds of the authenticated gateway (default 2, as in "
        "production; 0: every request reads its session from Redis)",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    up_port, bare_port, gw_port, auth_port = free_port(), free_port(), free_port(), free_port()
    bare_uv_port = free_port()
    (tmp / "upstream.py").write_text(UPSTREAM)
    (tmp / "bare.py").write_text(BARE_PROXY)
    config = tmp / "gateway.yaml"
    config.write_text(
        f"""
server: {{ port: {gw_port}, config_poll_seconds: 0 }}
logging: {{ format: json, level: info, access_log: true }}
routes:
  - name: portal
    match: {{ path: / }}
    upstream: http://127.0.0.1:{up_port}
    policy: public
"""
    )
    procs: list[subprocess.Popen[bytes]] = []
    log = (tmp / "gateway.log").open("wb")
    redis = RedisServer()
    try:
        redis.start()
        auth_config, cookie = prepare_authenticated(
            tmp, auth_port, up_port, redis.url, args.session_cache
        )
        # Order matters: the pids are read back in this order
        # (upstream, bare, bare on uvloop, gateway, auth).
        procs.append(subprocess.Popen([sys.executable, str(tmp / "upstream.py"), str(up_port)]))
        procs.append(
            subprocess.Popen([sys.executable, str(tmp / "bare.py"), str(bare_port), str(up_port)])
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(tmp / "bare.py"), str(bare_uv_port), str(up_port), "uvloop"]
            )
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(auth_config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        for port in (up_port, bare_port, bare_uv_port, gw_port, auth_port):
            wait_up(
                f"http://127.0.0.1:{port}/_gateway/healthz"
                if port == auth_port
                else f"http://127.0.0.1:{port}/"
            )
        # Headers a browser sends (a User-Agent among them), the same for every target.
        browser = ["User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench", "Accept: text/html"]
        plain = ["Cookie: lang=nl; __Host-gw_session=abc", *browser]
        up_pid, bare_pid, bare_uv_pid, gw_pid, auth_pid = (p.pid for p in procs)
        targets = [
            ("direct upstream", f"http://127.0.0.1:{up_port}/werkgevers?page=1", plain, up_pid),
            (
                "bare aiohttp proxy",
                f"http://127.0.0.1:{bare_port}/werkgevers?page=1",
                plain,
                bare_pid,
            ),
            (
                "bare proxy on uvloop",
                f"http://127.0.0.1:{bare_uv_port}/werkgevers?page=1",
                plain,
                bare_uv_pid,
            ),
            (
                "gateway, public route",
                f"http://127.0.0.1:{gw_port}/werkgevers?page=1",
                plain,
                gw_pid,
            ),
            (
                "gateway, authenticated",
                f"http://127.0.0.1:{auth_port}/werkgevers?page=1",
                [f"Cookie: lang=nl; {cookie}", *browser],
                auth_pid,
            ),
        ]
        check = subprocess.run(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                targets[4][2][0],
                targets[4][1],
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if check != "200":
            raise SystemExit(f"authenticated target answered {check!r}, not 200")
        best: dict[str, Result] = {}
        for name, url, headers, _pid in targets:  # warm up connection pools and caches
            run_wrk(name, url, 2, args.connections, headers)
        for _ in range(args.rounds):
            for name, url, headers, pid in targets:
                r = run_wrk(name, url, args.seconds, args.connections, headers, pid)
                if name not in best or r.rps > best[name].rps:
                    best[name] = r
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\nproxy benchmark: wrk -t1 -c{args.connections} -d{args.seconds}s, best of "
        f"{args.rounds} rounds, {os.cpu_count()} cores, access log on (JSON), "
        f"session cache {args.session_cache:g} s\n"
    )
    print(f"{'target':<24}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'CPU us/req':>12}")
    for r in best.values():
        print(
            f"{r.name:<24}{r.rps:>10.0f}{r.p50_ms:>10.2f}{r.p99_ms:>10.2f}{r.errors:>8}"
            f"{r.cpu_us_per_request:>12.0f}"
        )
    bare = best["bare aiohttp proxy"].rps
    bare_uv = best["bare proxy on uvloop"].rps
    gw = best["gateway, public route"].rps
    auth = best["gateway, authenticated"].rps
    print(f"\ngateway public / bare proxy:        {gw / bare:.2f}x  (target >= 0.85)")
    print(f"gateway authenticated / bare proxy: {auth / bare:.2f}x  (target >= 0.8, Redis store)")
    # The gateway runs on uvloop when installed; the same loop under the bare
    # proxy shows that the ratios do not come from the event loop alone.
    print(f"gateway public / bare on uvloop:        {gw / bare_uv:.2f}x")
    print(f"gateway authenticated / bare on uvloop: {auth / bare_uv:.2f}x")
    print(f"bare proxy / direct:  {bare / best['direct upstream'].rps:.2f}x")
    # CPU per request of the proxy process is what decides throughput when the
    # proxy is the bottleneck, and unlike req/s it barely moves when other
    # processes share the machine: the steadier way to compare on a busy host.
    for base in ("bare aiohttp proxy", "bare proxy on uvloop"):
        bare_cpu = best[base].cpu_us_per_request
        for name in ("gateway, public route", "gateway, authenticated"):
            ratio = bare_cpu / best[name].cpu_us_per_request
            print(f"CPU-per-request ratio, {base} / {name}: {ratio:.2f}x")
    return 0
