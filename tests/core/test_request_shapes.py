"""The request-shape table (``request_shapes.py``) against the gateway, and against nginx.

Every row sends raw bytes over a real socket; a real upstream records the raw
bytes it receives. The gateway must produce exactly the row's outcome. The
same rows then go through Debian's nginx with ``proxy_pass``: every row where
nginx and the gateway differ must be listed in ``docs/operations.md`` with
the reason, and no other row may be listed there.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httptools
import pytest
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from gateway.app import build_app
from tests.conftest import make_config
from tests.core.request_shapes import SHAPES, Shape, shape_routes
from tests.support.nginx import run_nginx
from tests.support.raw_http import RawUpstream

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


@dataclass(frozen=True)
class Outcome:
    statuses: tuple[int, ...]
    lines: tuple[bytes, ...]
    bodies: tuple[bytes, ...]

    @property
    def refused(self) -> bool:
        return not self.lines

    def summary(self) -> str:
        first = self.statuses[0] if self.statuses else "none"
        if self.refused:
            return f"refused ({first})"
        return f"forwarded {b' | '.join(self.lines).decode('latin-1')[:120]} ({first})"


class _Responses:
    """Counts complete responses with llhttp (httptools), 1xx interim answers apart."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.statuses: list[int] = []
        self.broken = False

    def on_message_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.broken = True

    def finals(self) -> list[int]:
        return [s for s in self.statuses if s >= 200]


async def exchange(port: int, raw: bytes, responses: int, timeout: float = 4.0) -> list[int]:
    """Send ``raw``; return the statuses of the answers (until ``responses`` finals or close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    parsed = _Responses()
    try:
        writer.write(raw)
        await writer.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(parsed.finals()) < responses and loop.time() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
            except (TimeoutError, ConnectionError):
                break
            if not chunk:
                break
            parsed.feed(chunk)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return parsed.statuses


async def run(port: int, upstream: RawUpstream, shape: Shape) -> Outcome:
    upstream.clear()
    statuses = await exchange(port, shape.raw, shape.responses)
    # An answer to the client comes after the upstream's; give a refused row's
    # stray bytes (if any) a moment to arrive so "nothing reached" is real.
    await asyncio.sleep(0.01)
    return Outcome(
        tuple(statuses),
        tuple(r.request_line for r in upstream.received),
        tuple(r.body for r in upstream.received),
    )


@pytest.fixture
async def upstream() -> AsyncIterator[RawUpstream]:
    async with RawUpstream() as up:
        yield up


@pytest.fixture
async def gateway_port(upstream: RawUpstream) -> AsyncIterator[int]:
    config = make_config(
        {"routes": shape_routes(upstream.url), "server": {"config_poll_seconds": 0}}
    )
    server = TestServer(build_app(config, configure_logs=False), host="127.0.0.1")
    await server.start_server()
    try:
        assert server.port is not None
        yield server.port
    finally:
        await server.close()


def test_the_table_is_large_and_names_are_unique() -> None:
    """At least 100 rows, each with its own name (the docs refer to rows by name)."""
    names = [s.name for s in SHAPES]
    assert len(names) >= 100
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
async def test_gateway_answers_each_shape_as_the_table_says(
    shape: Shape, upstream: RawUpstream, gateway_port: int
) -> None:
    """The upstream receives exactly the row's bytes, or nothing and the client a refusal."""
    outcome = await run(gateway_port, upstream, shape)
    finals = [s for s in outcome.statuses if s >= 200]
    assert finals, f"no answer: {outcome}"
    allowed = shape.status if isinstance(shape.status, tuple) else (shape.status,)
    assert finals[0] in allowed, outcome.summary()
    if shape.forwarded is None:
        assert outcome.lines == (), f"reached the upstream: {outcome.lines}"
        return
    assert list(outcome.lines) == shape.forwarded
    assert len(finals) == shape.responses
    if shape.bodies is not None:
        assert list(outcome.bodies) == shape.bodies
    for check in shape.checks:
        check(upstream.received[0])


NGINX_SERVER = """
        location = /portaal {{
            proxy_pass http://127.0.0.1:{up}/legacy/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location /portaal/ {{
            proxy_pass http://127.0.0.1:{up}/legacy/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location / {{
            proxy_pass http://127.0.0.1:{up};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
"""


def documented_differences() -> dict[str, str]:
    """Rows listed in the docs' "differs from nginx" table, with the reason given."""
    text = DOCS.read_text()
    start = text.index("### Where the gateway differs from nginx")
    section = text[start:]
    end = section.find("\n## ", 1)
    section = section if end == -1 else section[:end]
    found = {}
    for m in re.finditer(r"^\| `([a-z0-9.-]+)` \|[^|]*\|[^|]*\|([^|]+)\|", section, re.MULTILINE):
        found[m.group(1)] = m.group(2).strip()
    return found


def _same(ours: Outcome, theirs: Outcome) -> bool:
    return ours.refused == theirs.refused and ours.lines == theirs.lines


async def test_every_difference_from_nginx_is_documented(
    upstream: RawUpstream, gateway_port: int
) -> None:
    """Rows where nginx's proxy_pass and the gateway differ are exactly the documented ones."""
    differ: dict[str, tuple[Outcome, Outcome]] = {}
    async with run_nginx(NGINX_SERVER.format(up=upstream.port)) as nginx:
        for shape in SHAPES:
            ours = await run(gateway_port, upstream, shape)
            theirs = await run(nginx.port, upstream, shape)
            if not _same(ours, theirs):
                differ[shape.name] = (ours, theirs)
    documented = documented_differences()
    report = "\n".join(
        f"{name}: gateway {o.summary()} / nginx {t.summary()}" for name, (o, t) in differ.items()
    )
    print(f"{len(SHAPES)} shapes, {len(differ)} differ from nginx:\n{report}")
    assert all(documented.values()), "every documented difference gives a reason"
    assert sorted(differ) == sorted(documented), report


async def test_a_refused_shape_leaves_an_audit_event_without_the_target(
    upstream: RawUpstream, gateway_port: int
) -> None:
    """Refusals are audited with their reason; the audit event does not repeat the target."""
    raw = b"GET /pub/a;jsessionid=SECRET123 HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"
    with capture_logs() as logs:
        statuses = await exchange(gateway_port, raw, 1)
    assert statuses == [400]
    events = [e for e in logs if e.get("event") == "request_refused"]
    assert len(events) == 1
    assert events[0]["reason"] == "path parameters (;) are not accepted"
    assert events[0]["audit"] is True
    assert "SECRET123" not in repr(events)
