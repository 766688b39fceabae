"""Ops endpoints, metrics, access log and log redaction."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from gateway.logs import (
    PRECHECKED,
    REDACTED,
    AccessLog,
    BufferedLineLogger,
    configure_logging,
    redact,
    safe_query,
)
from gateway.runtime import RUNTIME
from tests.conftest import GatewayFactory


async def test_healthz_answers(gateway: GatewayFactory) -> None:
    """/_gateway/healthz says the process is alive."""
    client = await gateway()
    resp = await client.get("/_gateway/healthz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"


async def test_readyz_ready_then_draining(gateway: GatewayFactory) -> None:
    """/_gateway/readyz is 200 with checks, and 503 once the gateway drains."""
    client = await gateway()
    resp = await client.get("/_gateway/readyz")
    body = await resp.json()
    assert resp.status == 200, body
    assert body["checks"]["config"]["ok"] is True
    assert body["checks"]["draining"]["ok"] is True
    client.app[RUNTIME].draining = True
    resp = await client.get("/_gateway/readyz")
    assert resp.status == 503
    assert (await resp.json())["checks"]["draining"]["ok"] is False


async def test_unresolvable_upstream_is_a_dependency_not_readiness(
    gateway: GatewayFactory,
) -> None:
    """An unresolvable upstream shows in /_gateway/dependencies and the gauge; readyz stays 200."""
    client = await gateway(
        [
            {
                "name": "x",
                "match": {"path": "/"},
                "upstream": "http://no-such-host.invalid:80",
                "policy": "public",
            }
        ]
    )
    resp = await client.get("/_gateway/readyz")
    assert resp.status == 200  # every replica resolves the same DNS: not a reason to leave
    resp = await client.get("/_gateway/dependencies")
    body = await resp.json()
    assert resp.status == 503
    assert body["status"] == "degraded"
    assert body["dependencies"]["upstreams"]["up"] is False
    assert "no-such-host.invalid" in body["dependencies"]["upstreams"]["detail"]
    text = await (await client.get("/_gateway/metrics")).text()
    assert 'gateway_dependency_up{dependency="upstreams"} 0.0' in text


async def test_metrics_count_requests_and_errors(gateway: GatewayFactory) -> None:
    """Metrics show requests by route and status, latency, in-flight and upstream errors."""
    client = await gateway(
        [
            {"name": "ok", "match": {"path": "/ok"}, "policy": "public"},
            {
                "name": "dead",
                "match": {"path": "/dead"},
                "policy": "public",
                "upstream": "http://127.0.0.1:9",
            },
        ]
    )
    await client.get("/ok")
    await client.get("/ok")
    await client.get("/dead")
    text = await (await client.get("/_gateway/metrics")).text()
    assert 'gateway_requests_total{method="GET",route="ok",status="200"} 2.0' in text
    assert 'gateway_requests_total{method="GET",route="dead",status="502"} 1.0' in text
    assert 'gateway_upstream_errors_total{kind="connect",route="dead"} 1.0' in text
    assert 'gateway_request_duration_seconds_count{route="ok"} 2.0' in text
    assert "gateway_requests_in_flight" in text


async def test_access_log_one_line_per_request_without_query_secrets(
    gateway: GatewayFactory,
) -> None:
    """Each request logs one access line with id, route, status, sizes and timings."""
    client = await gateway()
    with capture_logs() as logs:
        resp = await client.get("/echo?SAMLart=AAQAAsecret&page=2")
    lines = [e for e in logs if e["event"] == "request_handled"]
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == resp.headers["X-Request-ID"]
    assert line["route"] == "all" and line["status"] == 200 and line["method"] == "GET"
    assert line["path"] == "/echo"
    assert "AAQAAsecret" not in line["query"] and "page=2" in line["query"]
    assert line["bytes"] > 0 and line["duration_ms"] >= line["upstream_ms"] >= 0


def test_safe_query_redacts_sensitive_parameters() -> None:
    """SAML and token parameters keep their names but lose their values."""
    out = safe_query("SAMLResponse=PHNhbWw&RelayState=abc&token=eyJx&q=werkgever")
    assert "PHNhbWw" not in out and "abc" not in out and "eyJx" not in out
    assert "q=werkgever" in out


def test_redact_processor_blanks_sensitive_keys_and_values() -> None:
    """Sensitive keys are blanked; JWT- and SAML-looking parts are cut out anywhere in an event."""
    event = {
        "event": "x",
        "cookie": "__Host-gw_session=abc",
        "authorization": "Bearer abc",
        "note": "header was eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.sig",
        "nested": {"saml_response": "<samlp:Response/>", "fine": "ok"},
        "items": ["PHNhbWxwOlJlc3BvbnNl", "plain"],
        "kvk": "12345678",
    }
    out = redact(None, "info", dict(event))
    assert out["cookie"] == REDACTED and out["authorization"] == REDACTED
    assert out["note"] == f"header was {REDACTED}"
    assert out["nested"] == {"saml_response": REDACTED, "fine": "ok"}
    assert out["items"] == [REDACTED, "plain"]
    assert out["kvk"] == "12345678"


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("restore_structlog")
def test_json_logs_are_redacted_on_output() -> None:
    """The configured JSON renderer writes one JSON object per line, already redacted."""
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    structlog.get_logger("t").info("login_failed", token="eyJabc.def.ghi", kvk="12345678")
    record = json.loads(stream.getvalue().strip())
    assert record["event"] == "login_failed"
    assert record["token"] == REDACTED and record["kvk"] == "12345678"
    assert record["level"] == "info" and "timestamp" in record


async def test_access_log_redacts_token_in_path(gateway: GatewayFactory) -> None:
    """A token pasted into a URL path never reaches the access log."""
    client = await gateway()
    token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    with capture_logs() as logs:
        await client.get(f"/reset/{token}")
    (line,) = [e for e in logs if e["event"] == "request_handled"]
    assert token not in str(line)
    assert line["path"] == f"/reset/{REDACTED}"


@pytest.mark.usefixtures("restore_structlog")
def test_timestamps_are_iso_utc_with_milliseconds() -> None:
    """Every JSON log line carries an ISO-8601 UTC timestamp with milliseconds."""
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    structlog.get_logger("t").info("a_happened")
    stamp = json.loads(stream.getvalue())["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    parsed = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.UTC) - parsed).total_seconds()) < 5


@pytest.mark.usefixtures("restore_structlog")
def test_access_line_is_the_configured_chains_line() -> None:
    """An access line comes out exactly as the configured JSON processors render it.

    The access log renders a line in one step while the configured processors
    are the JSON chain; the result must be the chain's own, byte for byte
    (the timestamp aside), and a changed chain (``capture_logs``, another
    format) must be honoured.
    """

    def fields() -> dict[str, object]:
        return {
            PRECHECKED: True,
            "request_id": "0123456789abcdef0123456789abcdef",
            "route": "employer-pages",
            "method": "GET",
            "path": "/werkgevers/30000001/overzicht",
            "query": "periode=2024-12",
            "status": 200,
            "bytes": 2048,
            "duration_ms": 0.52,
            "upstream_ms": None,
            "client": "127.0.0.1",
        }

    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    direct = AccessLog(BufferedLineLogger(stream, interval=3600), enabled=True)
    chain = AccessLog(BufferedLineLogger(stream, interval=3600), enabled=True)
    chain._json_chain = None  # every processor, one by one
    direct.emit("request_handled", fields())
    chain.emit("request_handled", fields())
    direct.sink.flush()
    chain.sink.flush()
    one, two = (
        re.sub(r'"timestamp":"[^"]+"', "T", line) for line in stream.getvalue().splitlines()
    )
    assert one == two
    record = json.loads(stream.getvalue().splitlines()[0])
    assert PRECHECKED not in record
    assert list(record)[-3:] == ["event", "level", "timestamp"]
    assert record["path"] == "/werkgevers/30000001/overzicht" and record["upstream_ms"] is None
    with capture_logs() as logs:
        direct.emit("request_handled", fields())
    assert [e["event"] for e in logs] == ["request_handled"]
    configure_logging("console", "info", stream=io.StringIO())
    console = AccessLog(BufferedLineLogger(stream, interval=3600), enabled=True)
    console.emit("request_handled", fields())
    assert "request_handled" in console.sink._lines[0] and not console.sink._lines[0].startswith(
        "{"
    )


def test_buffered_access_logger_batches_whole_lines() -> None:
    """Access lines wait for the interval or flush() and go out in whole-line batches <= 4 KiB."""

    class Stream(io.StringIO):
        writes: list[str] = []  # noqa: RUF012 - one test's record
        flushes = 0

        def write(self, text: str) -> int:
            Stream.writes.append(text)
            return super().write(text)

        def flush(self) -> None:
            Stream.flushes += 1
            super().flush()

    stream = Stream()
    logger = BufferedLineLogger(stream, interval=3600)
    logger.msg("one")
    logger.msg("two")
    assert stream.getvalue() == ""
    logger.flush()
    assert stream.getvalue() == "one\ntwo\n"
    assert Stream.writes == ["one\ntwo\n"]
    Stream.writes.clear()
    for i in range(100):
        logger.msg(f"line-{i:03d} " + "x" * 90)
    logger.flush()
    assert all(len(w) <= 4096 and w.endswith("\n") for w in Stream.writes)
    assert "".join(Stream.writes).count("\n") == 100
    eager = BufferedLineLogger(stream, interval=0)
    before = Stream.flushes
    eager.msg("three")
    assert Stream.flushes == before + 1


async def test_access_log_counts_bytes_of_gateway_pages(gateway: GatewayFactory) -> None:
    """The access line of a gateway page (not streamed) reports its body size, not 0."""
    client = await gateway()
    with capture_logs() as logs:
        resp = await client.get("/_gateway/healthz")
        body = await resp.read()
    (line,) = [e for e in logs if e["event"] == "request_handled"]
    assert line["bytes"] == len(body) > 0


def test_access_line_cleaning_is_remembered_only_for_short_values() -> None:
    """The access line's path and query are cleaned as always, remembered or not."""
    from gateway.edge import _logged, _logged_short
    from gateway.logs import redact_path

    token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    for _ in range(2):
        assert _logged(redact_path, f"/reset/{token}") == f"/reset/{REDACTED}"
        assert _logged(safe_query, f"token={token}&a=1") == safe_query(f"token={token}&a=1")
    hits = _logged_short.cache_info().hits
    long_path = "/x/" + "a" * 300
    assert _logged(redact_path, long_path) == redact_path(long_path)
    assert _logged_short.cache_info().hits == hits
