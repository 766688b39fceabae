"""Secrets are redacted from log lines by what they look like, wherever they appear.

The values are real: a JWT signed by the gateway's own token minter, a SAML
artifact issued by the broker simulator, a deflated AuthnRequest as the
Redirect binding sends it, a session ID made by the session code. Each test
captures the rendered output (the JSON lines on the stream), so everything
between the event and the bytes written, redaction included, is exercised.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.edge import ACCESS_LOG
from gateway.identity import Employer, Identity, Loa
from gateway.logs import REDACTED, configure_logging, redact_path, redact_text, safe_query
from gateway.sessions.manager import new_session_id
from gateway.tokens import KeySet, TokenMinter, TokenSettings, TokenSubject, init_keys_dir
from gateway.tokens.settings import TokenKeyFiles
from tests.conftest import make_config
from tests.support.simulator import MiniSp, acs_params, start_simulator


@dataclass(frozen=True)
class Secrets:
    """Real secret values, made by the code that makes them in production."""

    jwt: str
    artifact: str
    deflated_request: str
    session_id: str

    def all(self) -> dict[str, str]:
        return {
            "jwt": self.jwt,
            "artifact": self.artifact,
            "deflated_request": self.deflated_request,
            "session_id": self.session_id,
        }


def _signed_jwt(keys_dir: Path) -> str:
    init_keys_dir(keys_dir)
    settings = TokenSettings(issuer="https://gw.example", keys=TokenKeyFiles.in_dir(keys_dir))
    minter = TokenMinter(settings, KeySet.from_settings(settings))
    identity = Identity(
        acting_subject="pseudo-1",
        legal_subject_kvk="87654321",
        loa=Loa.EH3,
        service_id="urn:etoegang:DV:00000001234567890000:services:1",
        login_time=dt.datetime.now(dt.UTC),
    )
    subject = TokenSubject(
        identity=identity,
        allowed=(Employer(kvk="12345678", name="Bakkerij"),),
        session_ref="ref-1",
    )
    return minter.mint(subject, "portal")


@pytest.fixture
async def secrets_(tmp_path_factory: pytest.TempPathFactory) -> Secrets:
    """One of each secret kind, from the real producers."""
    jwt = _signed_jwt(tmp_path_factory.mktemp("keys"))
    sp = MiniSp()
    async with start_simulator(sp_metadata=sp.metadata()) as sim:
        rid, url = sp.redirect_url(sim.sso_url)
        sim.use_scenario("direct", request_id=rid)
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, allow_redirects=False) as resp,
        ):
            assert resp.status == 303
            artifact = acs_params(resp.headers["Location"])["SAMLart"]
    deflated = dict(p.split("=", 1) for p in urlsplit(url).query.split("&"))["SAMLRequest"]
    return Secrets(jwt, artifact, deflated, new_session_id())


@pytest.fixture
def rendered() -> Iterator[io.StringIO]:
    """Configure JSON logging into a buffer; restore structlog afterwards."""
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    yield stream
    structlog.reset_defaults()
    logging.basicConfig(force=True)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


@pytest.fixture
async def gateway_client(
    upstream: TestServer, rendered: io.StringIO
) -> AsyncIterator[TestClient[Any, Any]]:
    """A gateway with one public route, logging into ``rendered``."""
    base = str(upstream.make_url("/")).rstrip("/")
    config = make_config(
        {
            "server": {"config_poll_seconds": 0},
            "routes": [
                {"name": "all", "match": {"path": "/"}, "upstream": base, "policy": "public"}
            ],
        }
    )
    app = build_app(config, configure_logs=False)
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_access_log_redacts_secrets_in_any_query_parameter(
    gateway_client: TestClient[Any, Any], rendered: io.StringIO, secrets_: Secrets
) -> None:
    """A JWT, artifact, deflated SAML message or session ID under an innocent name is redacted."""
    for name, value in secrets_.all().items():
        await gateway_client.get(f"/search?page=2&{name}x={quote(value, safe='')}&q=werkgever")
        await gateway_client.get(f"/search?{quote(value, safe='')}")  # a bare value, no name
    gateway_client.app[ACCESS_LOG].sink.flush()
    out = rendered.getvalue()
    lines = [e for e in _lines(rendered) if e["event"] == "request_handled"]
    assert len(lines) == 8
    for value in secrets_.all().values():
        assert value not in out and quote(value, safe="") not in out
    for line in lines[::2]:
        assert "page=2" in line["query"] and "q=werkgever" in line["query"]
        assert REDACTED in line["query"]


async def test_access_log_redacts_secrets_in_the_path(
    gateway_client: TestClient[Any, Any], rendered: io.StringIO, secrets_: Secrets
) -> None:
    """A secret pasted into a path segment is cut out; the rest of the path stays readable."""
    for value in (secrets_.jwt, secrets_.session_id):
        await gateway_client.get(f"/reset/{value}/done")
    gateway_client.app[ACCESS_LOG].sink.flush()
    lines = [e for e in _lines(rendered) if e["event"] == "request_handled"]
    assert [line["path"] for line in lines] == [f"/reset/{REDACTED}/done"] * 2


async def test_messages_and_header_values_are_redacted_by_shape(
    rendered: io.StringIO, secrets_: Secrets
) -> None:
    """Secrets inside messages, header dicts and library log records never reach the output."""
    log = structlog.get_logger("t")
    for value in secrets_.all().values():
        log.warning(f"backend said: bad value {value} in request", detail=f"got {value}")
        log.info("upstream_headers", headers={"X-Debug": value, "Location": f"/x?y={value}"})
        logging.getLogger("aiohttp.server").error("Error handling request %s", value)
    out = rendered.getvalue()
    for value in secrets_.all().values():
        assert value not in out
    first = next(e for e in _lines(rendered) if e["event"].startswith("backend said"))
    assert first["event"] == f"backend said: bad value {REDACTED} in request"
    assert first["detail"] == f"got {REDACTED}"


async def test_exception_tracebacks_are_redacted(rendered: io.StringIO, secrets_: Secrets) -> None:
    """An exception message that carries a token is redacted in the formatted traceback too."""
    try:
        raise ValueError(f"token rejected: {secrets_.jwt}")
    except ValueError:
        structlog.get_logger("t").exception("verify_failed")
    out = rendered.getvalue()
    assert secrets_.jwt not in out
    (line,) = [e for e in _lines(rendered) if e["event"] == "verify_failed"]
    assert "ValueError: token rejected: " + REDACTED in line["exception"]


def test_key_thumbprints_stay_readable(rendered: io.StringIO, tmp_path: Path) -> None:
    """kid values (43-character thumbprints, public) are not mistaken for session IDs."""
    init_keys_dir(tmp_path)
    keys = KeySet(TokenKeyFiles.in_dir(tmp_path), "ES256")
    out = _lines(rendered)
    loaded = [e for e in out if e["event"] == "token_keys_loaded"]
    assert loaded and loaded[0]["kids"] == keys.kids


async def test_redact_text_and_safe_query_are_the_free_text_rules(secrets_: Secrets) -> None:
    """The helpers the access log uses cut secrets out and keep everything else."""
    assert redact_path(f"/a/{secrets_.artifact}") == f"/a/{REDACTED}"
    assert redact_path("/werkgevers/12345678/loonaangifte") == "/werkgevers/12345678/loonaangifte"
    long_path = "/werkgevers/12345678/" + "/".join(["loonaangifte-2025-maart-overzicht"] * 8)
    assert len(long_path) > 160 and redact_path(long_path) == long_path
    # An artifact for endpoint index 256 (bytes 00 04 01 00: "AAQB...") has no AAQA mark.
    other_index = base64.b64encode(b"\x00\x04\x01\x00" + bytes(range(40))).decode()
    assert redact_text(f"got {other_index} back") == f"got {REDACTED} back"
    assert redact_text(f"message {secrets_.deflated_request}") == f"message {REDACTED}"
    raw = f"a=1&token={secrets_.jwt}&b=2"
    assert safe_query(raw) == f"a=1&token={REDACTED}&b=2"
    plain = "werkgever=12345678&jaar=2025&sort=naam"
    assert safe_query(plain) == plain
