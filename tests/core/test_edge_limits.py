"""The client side of the edge: deadlines, connection caps, descriptor exhaustion, 499.

Each test runs ``gateway serve`` as a process (the server as ops run it) in
front of a real upstream and speaks raw HTTP/1.1 over sockets on 127.0.0.1,
so what is asserted is what a client sees on the wire: an answer, a refusal,
or its connection closed by the gateway. Deadlines are configured small (1-2 s);
every wait is bounded, and no test asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import ipaddress
import json
import logging
import resource
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from gateway import pages
from gateway.config import ServerSettings
from gateway.connections import client_key, connection_cap, descriptor_exhaustion
from gateway.errors import UpstreamUnavailable
from gateway.logs import configure_logging
from tests.conftest import GatewayFactory
from tests.support.processes import GatewayProcess, free_port
from tests.support.upstream import UpstreamLog

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# The longest any single wait may take: far above every deadline configured here.
BOUND = 15.0


@dataclass
class Gateway:
    proc: GatewayProcess
    port: int
    opened: list[asyncio.StreamWriter] = field(default_factory=list)

    async def connect(self) -> Conn:
        conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), BOUND)
        self.opened.append(conn[1])
        return conn

    async def close_all(self) -> None:
        for writer in self.opened:
            writer.close()
        for writer in self.opened:
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 5)

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.proc.output().splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    async def access_line(self, path: str) -> dict[str, Any]:
        """The access-log line for ``path``, waiting (bounded) until it is written."""
        async with asyncio.timeout(BOUND):
            while True:
                for event in self.log_events():
                    if event.get("event") == "request_handled" and event.get("path") == path:
                        return event
                await asyncio.sleep(0.1)

    async def metrics(self) -> str:
        conn = await self.connect()
        status, _, body = await exchange(conn, "GET /_gateway/metrics HTTP/1.1\r\nHost: gw\r\n\r\n")
        conn[1].close()
        assert status == 200
        return body.decode()


GatewayStarter = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway(tmp_path: Path, upstream: TestServer) -> AsyncIterator[GatewayStarter]:
    """Start ``gateway serve`` with a public catch-all route and these ``server`` settings."""
    started: list[GatewayProcess] = []
    gateways: list[Gateway] = []

    async def start(preexec_fn: Callable[[], None] | None = None, **server: object) -> Gateway:
        port = free_port()
        cfg = tmp_path / f"gateway-{len(started)}.yaml"
        base = str(upstream.make_url("/")).rstrip("/")
        route = {"name": "all", "match": {"path": "/"}, "upstream": base, "policy": "public"}
        config = {
            "server": {"port": port, "config_poll_seconds": 0, **server},
            "logging": {"format": "json"},
            "routes": [route],
        }
        cfg.write_text(yaml.safe_dump(config))
        proc = GatewayProcess(["serve", "--config", str(cfg)], preexec_fn=preexec_fn)
        started.append(proc)
        await proc.wait_http(f"http://127.0.0.1:{port}/_gateway/healthz")
        # The readiness probe's own connection is closed; let the gateway see that
        # before a test counts connections against a cap.
        await asyncio.sleep(0.5)
        gateways.append(Gateway(proc, port))
        return gateways[-1]

    yield start
    for gw in gateways:
        await gw.close_all()
    for proc in started:
        proc.stop()


async def read_response(conn: Conn) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, headers (lower-case names) and body."""
    reader = conn[0]
    async with asyncio.timeout(BOUND):
        status = int((await reader.readuntil(b"\r\n")).split(b" ")[1])
        headers: dict[str, str] = {}
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read()
    return status, headers, body


async def exchange(conn: Conn, request: str | bytes) -> tuple[int, dict[str, str], bytes]:
    conn[1].write(request.encode() if isinstance(request, str) else request)
    await conn[1].drain()
    return await read_response(conn)


async def closed_by_gateway(conn: Conn, within: float = BOUND) -> bool:
    """Read (and drop) whatever comes until the gateway closes; False if it stays open."""
    try:
        async with asyncio.timeout(within):
            while await conn[0].read(65536):
                pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


GET_ECHO = "GET /echo HTTP/1.1\r\nHost: gw\r\n\r\n"


async def test_slowloris_heads_are_cut_at_the_header_deadline(
    start_gateway: GatewayStarter,
) -> None:
    """Connections sending their request head a byte at a time are closed at the head deadline."""
    gw = await start_gateway(client_header_timeout_seconds=1, client_keepalive_seconds=30)
    conns = [await gw.connect() for _ in range(20)]

    async def drip(conn: Conn) -> None:
        # A request line, then one header byte every 0.2 s, for as long as the gateway lets it.
        conn[1].write(b"GET /echo HTTP/1.1\r\nHost: gw\r\n")
        with contextlib.suppress(ConnectionError):
            while True:
                await asyncio.sleep(0.2)
                conn[1].write(b"X")
                await conn[1].drain()

    drips = [asyncio.create_task(drip(conn)) for conn in conns]
    try:
        closed = await asyncio.gather(*(closed_by_gateway(conn) for conn in conns))
    finally:
        for task in drips:
            task.cancel()
        await asyncio.gather(*drips, return_exceptions=True)
    assert closed == [True] * 20
    # A well-behaved client is not affected.
    assert (await exchange(await gw.connect(), GET_ECHO))[0] == 200
    assert 'gateway_client_timeouts_total{kind="header"} 20.0' in await gw.metrics()


async def test_idle_connections_are_closed(start_gateway: GatewayStarter) -> None:
    """An idle keep-alive connection is closed after the keep-alive timeout; a silent one too."""
    gw = await start_gateway(client_keepalive_seconds=1, client_header_timeout_seconds=1)
    used, silent = await gw.connect(), await gw.connect()
    status, headers, _ = await exchange(used, GET_ECHO)
    assert status == 200 and headers.get("connection", "").lower() != "close"
    assert await closed_by_gateway(used)
    assert await closed_by_gateway(silent)


async def test_stalled_upload_gets_408_and_steady_slow_upload_passes(
    start_gateway: GatewayStarter,
) -> None:
    """A body that stops arriving is answered 408 and closed; a slow but steady one goes through."""
    gw = await start_gateway(client_body_timeout_seconds=2)
    head = (
        "POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Type: application/octet-stream\r\n"
        "Content-Length: {n}\r\n\r\n"
    )
    stalled = await gw.connect()
    stalled[1].write(head.format(n=100_000).encode() + b"x" * 1000)
    status, headers, body = await read_response(stalled)
    assert status == 408
    assert headers["connection"].lower() == "close"
    assert "Het verzoek duurde te lang" in body.decode() and "took too long" in body.decode()
    assert await closed_by_gateway(stalled)
    assert (await gw.access_line("/upload"))["status"] == 408

    steady = await gw.connect()
    steady[1].write(head.format(n=1000).encode())
    for _ in range(10):  # 100 bytes every 0.3 s: never 2 s without a byte
        await asyncio.sleep(0.3)
        steady[1].write(b"y" * 100)
    status, _, body = await read_response(steady)
    assert status == 200 and json.loads(body) == {"received": 1000}
    assert 'gateway_client_timeouts_total{kind="body"} 1.0' in await gw.metrics()


async def test_connections_per_client_are_capped_with_a_503_page(
    start_gateway: GatewayStarter,
) -> None:
    """Beyond max_connections_per_client a new connection gets a 503 page and is closed."""
    gw = await start_gateway(max_connections_per_client=4)
    held = [await gw.connect() for _ in range(4)]
    for conn in held:
        assert (await exchange(conn, GET_ECHO))[0] == 200
    extra = await gw.connect()
    status, headers, body = await exchange(extra, GET_ECHO)
    assert status == 503
    assert headers["connection"].lower() == "close" and "retry-after" in headers
    assert (
        "Tijdelijk niet beschikbaar" in body.decode() and "Temporarily unavailable" in body.decode()
    )
    assert await closed_by_gateway(extra)

    # A place freed is a place for the next connection.
    held.pop()[1].close()
    async with asyncio.timeout(BOUND):
        while True:
            conn = await gw.connect()
            status = (await exchange(conn, GET_ECHO))[0]
            conn[1].close()
            if status == 200:
                break
            await asyncio.sleep(0.1)
    for conn in held:
        conn[1].close()
    await asyncio.sleep(0.3)
    text = await gw.metrics()
    assert 'gateway_client_connections_refused_total{reason="per_client"}' in text


async def test_trusted_proxy_counts_only_toward_the_total_cap(
    start_gateway: GatewayStarter,
) -> None:
    """A trusted proxy's connections are not capped per client, only by max_connections."""
    gw = await start_gateway(
        trusted_proxies=["127.0.0.1/32"], max_connections_per_client=2, max_connections=4
    )
    held = [await gw.connect() for _ in range(4)]
    for conn in held:  # twice the per-client cap: a proxy carries many clients
        assert (await exchange(conn, GET_ECHO))[0] == 200
    extra = await gw.connect()
    assert (await exchange(extra, GET_ECHO))[0] == 503
    assert await closed_by_gateway(extra)
    held.pop()[1].close()
    await asyncio.sleep(0.3)
    assert 'gateway_client_connections_refused_total{reason="total"} 1.0' in await gw.metrics()


def _128_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))


@pytest.mark.slow
async def test_default_cap_keeps_idle_floods_below_the_descriptor_limit(
    start_gateway: GatewayStarter,
) -> None:
    """128 descriptors, 150 idle connections: 503 pages beyond the cap, clients inside it served."""
    gw = await start_gateway(preexec_fn=_128_descriptors)
    probes = [await gw.connect() for _ in range(8)]
    flood: list[Conn] = []
    for _ in range(150):
        with contextlib.suppress(OSError, TimeoutError):
            flood.append(await gw.connect())
    # Every connection is answered or closed; none hangs, none gets a 500.
    for conn in flood:
        conn[1].write(GET_ECHO.encode())
    outcomes = await asyncio.gather(*(_outcome(conn) for conn in flood))
    assert "500" not in outcomes
    assert outcomes.count("503") > 0
    # The probes, inside the cap, are served while the flood is there.
    answers = await asyncio.gather(*(exchange(conn, GET_ECHO) for conn in probes))
    assert [status for status, _, _ in answers] == [200] * 8
    events = gw.log_events()
    limits = next(e for e in events if e.get("event") == "client_connection_limits")
    assert limits["descriptor_limit"] == 128 and limits["max_connections"] < 128
    assert any(e.get("event") == "client_connections_refused" for e in events)


@pytest.mark.slow
@pytest.mark.parametrize("uvloop", [True, False], ids=["uvloop", "asyncio"])
async def test_descriptor_exhaustion_answers_503_never_500(
    start_gateway: GatewayStarter, uvloop: bool
) -> None:
    """Out of descriptors (cap set above the limit): 503 pages or closed connections, never 500."""
    gw = await start_gateway(preexec_fn=_128_descriptors, max_connections=1000, uvloop=uvloop)
    probes = [await gw.connect() for _ in range(40)]
    flood: list[Conn] = []
    for _ in range(120):  # more than the process has descriptors left
        with contextlib.suppress(OSError, TimeoutError):
            flood.append(await asyncio.wait_for(gw.connect(), 2))
    await asyncio.sleep(0.5)
    # Each probe's request needs an upstream connection, and there is no descriptor for it.
    answers = await asyncio.gather(
        *(exchange(conn, "GET /slow?seconds=0.5 HTTP/1.1\r\nHost: gw\r\n\r\n") for conn in probes)
    )
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses
    page = next(body.decode() for status, _, body in answers if status == 503)
    assert "Tijdelijk niet beschikbaar" in page and "Temporarily unavailable" in page
    # The full page: its templates were loaded at start, no file had to be opened now.
    assert "Werkgeversportaal</title>" in page
    # Connections the flood left waiting are answered or closed, never with a 500.
    for conn in flood:
        with contextlib.suppress(ConnectionError):
            conn[1].write(GET_ECHO.encode())
    outcomes = await asyncio.gather(*(_outcome(conn, within=3) for conn in flood))
    assert "500" not in outcomes
    events = gw.log_events()
    exhausted = [e for e in events if e.get("event") == "descriptors_exhausted"]
    assert exhausted and "Too many open files" in exhausted[0]["exception"]
    assert gw.proc.proc.poll() is None  # still running


async def _outcome(conn: Conn, within: float = BOUND) -> str:
    """What became of a connection: its status code, "closed", or "open" (still waiting)."""
    try:
        async with asyncio.timeout(within):
            line = await conn[0].readline()
    except TimeoutError:
        return "open"
    except ConnectionError:
        return "closed"
    return line.split(b" ")[1].decode() if line.startswith(b"HTTP/1.1 ") else "closed"


async def test_client_leaving_mid_upload_is_499(
    start_gateway: GatewayStarter, upstream_log: UpstreamLog
) -> None:
    """A client that closes its connection mid-upload is logged and counted as 499."""
    gw = await start_gateway()
    conn = await gw.connect()
    conn[1].write(
        b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 20000
    )
    await asyncio.wait_for(upstream_log.first_chunk_seen.wait(), BOUND)
    conn[1].close()
    line = await gw.access_line("/upload")
    assert line["status"] == 499
    assert 'gateway_requests_total{method="POST",route="all",status="499"} 1.0' in (
        await gw.metrics()
    )


async def test_client_leaving_while_waiting_for_the_upstream_is_499(
    start_gateway: GatewayStarter,
) -> None:
    """A client that gives up while the upstream is still answering is logged and counted as 499."""
    gw = await start_gateway()
    conn = await gw.connect()
    conn[1].write(b"GET /slow?seconds=5 HTTP/1.1\r\nHost: gw\r\n\r\n")
    await asyncio.sleep(0.5)  # the request is with the upstream now
    conn[1].close()
    line = await gw.access_line("/slow")
    assert line["status"] == 499
    assert 'gateway_requests_total{method="GET",route="all",status="499"} 1.0' in (
        await gw.metrics()
    )


async def test_error_page_that_fails_to_render_falls_back_to_a_static_page(
    gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If rendering an error page fails, the client still gets a minimal 5xx page, and the
    traceback is logged."""
    client = await gateway(
        [
            {
                "name": "dead",
                "match": {"path": "/"},
                "policy": "public",
                "upstream": "http://127.0.0.1:9",
            }
        ]
    )

    def broken(template: str, **context: object) -> str:
        raise RuntimeError("template engine broke")

    monkeypatch.setattr(pages, "render", broken)
    with capture_logs() as logs:
        resp = await client.get("/anything")
        body = await resp.text()
    assert resp.status == 502
    assert resp.headers["Content-Type"].startswith("text/html")
    assert "Portaal niet bereikbaar" in body and "Portal unavailable" in body
    assert resp.headers["X-Request-ID"] in body
    failed = [e for e in logs if e["event"] == "error_page_failed"]
    assert failed and failed[0]["exc_info"] is True
    assert [e["status"] for e in logs if e["event"] == "request_handled"] == [502]


def test_library_errors_keep_their_traceback_in_the_log(restore_structlog: None) -> None:
    """An error logged by a library (aiohttp, asyncio) keeps its traceback in the JSON line."""
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    try:
        raise OSError(24, "Too many open files")
    except OSError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    line = json.loads(out.getvalue().splitlines()[-1])
    assert line["message"] == "Error handling request"
    assert "Traceback" in line["exception"] and "Too many open files" in line["exception"]


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_client_leaving_mid_download_keeps_the_status_it_got(
    start_gateway: GatewayStarter, upstream_log: UpstreamLog
) -> None:
    """A client that leaves after the answer's head arrived is logged with that status (nginx)."""
    gw = await start_gateway()
    conn = await gw.connect()
    conn[1].write(b"GET /download HTTP/1.1\r\nHost: gw\r\n\r\n")
    async with asyncio.timeout(BOUND):
        assert (await conn[0].readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        await conn[0].readuntil(b"first-chunk;")
    conn[1].close()
    await asyncio.sleep(0.3)
    upstream_log.release_download.set()
    line = await gw.access_line("/download")
    assert line["status"] == 200 and line["bytes"] >= len("first-chunk;")


# -- the pure decisions behind the caps ---------------------------------------------


def test_default_cap_leaves_room_for_upstream_connections() -> None:
    """The default total cap keeps client plus upstream connections under the descriptor limit."""
    assert connection_cap(None, 1024, 200) == 1024 - 200 - 32
    assert connection_cap(None, 128, 200) == 128 - 64 - 32  # the pool cannot use more than half
    assert connection_cap(None, 1 << 20, 200) == 4096  # plenty of descriptors: the memory bound
    assert connection_cap(None, 16, 200) == 1
    assert connection_cap(50_000, 1024, 200) == 50_000  # an explicit setting is taken as it is


def test_client_key_groups_ipv6_by_64_and_exempts_trusted_proxies() -> None:
    """Connections count per IPv4 address or IPv6 /64; trusted proxies and unknown peers not."""
    trusted = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_key(("192.0.2.7", 51000), trusted) == "192.0.2.7"
    assert client_key(("::ffff:192.0.2.7", 51000, 0, 0), trusted) == "192.0.2.7"
    assert client_key(("2001:db8:1:2:aaaa::1", 51000, 0, 0), trusted) == "2001:db8:1:2::/64"
    assert client_key(("2001:db8:1:2:bbbb::9", 51000, 0, 0), trusted) == "2001:db8:1:2::/64"
    assert client_key(("10.1.2.3", 51000), trusted) == ""
    assert client_key(None, trusted) == ""


def test_descriptor_exhaustion_is_found_behind_wrapping_errors() -> None:
    """EMFILE is recognised when the proxy wrapped it in its own errors."""
    try:
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError as exc:
            raise UpstreamUnavailable("all: connect: Too many open files") from exc
    except UpstreamUnavailable as wrapped:
        found = descriptor_exhaustion(wrapped)
    assert found is not None and found.errno == errno.EMFILE
    assert descriptor_exhaustion(UpstreamUnavailable("refused")) is None
    assert descriptor_exhaustion(ConnectionRefusedError(errno.ECONNREFUSED, "refused")) is None


EDGE_SETTINGS = (
    "client_keepalive_seconds",
    "client_header_timeout_seconds",
    "client_body_timeout_seconds",
    "max_connections",
    "max_connections_per_client",
)


def test_example_config_and_docs_give_every_connection_limit_with_its_default() -> None:
    """config/gateway.example.yaml states each limit's real default; docs/operations.md has it."""
    root = Path(__file__).resolve().parents[2]
    example = yaml.safe_load((root / "config" / "gateway.example.yaml").read_text())["server"]
    docs = (root / "docs" / "operations.md").read_text()
    defaults = ServerSettings()
    for key in EDGE_SETTINGS:
        assert example[key] == getattr(defaults, key), key
        assert f"| `server.{key}` |" in docs, key
