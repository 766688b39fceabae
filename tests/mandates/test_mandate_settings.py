"""MandateSettings: safe defaults, strict validation, and the source each kind builds."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.mandates import (
    FileSourceSettings,
    HttpSourceSettings,
    MandateService,
    MandateSettings,
    build_source,
)
from gateway.mandates.file_source import FileMandateSource
from gateway.mandates.freshness import Freshness
from gateway.mandates.http_source import HttpMandateSource
from gateway.store.memory import MemoryStore

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "mandates.example.yaml"
URL = "https://registry.example/api/administrators/{kvk}/mandates"


def test_defaults_match_the_documented_policy() -> None:
    """Defaults: 3 attempts, breaker after 5, a 15 s lock; no freshness limit of its own."""
    s = MandateSettings.model_validate({"source": {"kind": "http", "url_template": URL}})
    assert isinstance(s.source, HttpSourceSettings)
    assert (s.source.max_attempts, s.source.breaker_failure_threshold) == (3, 5)
    assert s.lock_ttl == 15


@pytest.mark.parametrize(
    ("key", "pointer"),
    [
        ("cache_ttl", "sessions.mandate_recheck_interval"),
        ("max_staleness", "sessions.mandate_max_staleness"),
    ],
)
def test_a_second_freshness_limit_is_refused_with_the_setting_to_use(
    key: str, pointer: str
) -> None:
    """cache_ttl and max_staleness are refused at their path, naming the session setting."""
    with pytest.raises(ValidationError) as err:
        MandateSettings.model_validate({"source": {"kind": "file", "path": "m.yaml"}, key: 60})
    (problem,) = err.value.errors()
    assert problem["loc"] == (key,)
    assert pointer in problem["msg"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"kind": "http", "url_template": "https://r/api/mandates"}, "exactly once"),
        ({"kind": "http", "url_template": "https://r/{kvk}/{x}"}, "no other braces"),
        ({"kind": "http", "url_template": "http://r/{kvk}"}, "https"),
        (
            {"kind": "http", "url_template": URL, "client_cert_file": "c.pem"},
            "go together",
        ),
        ({"kind": "http", "url_template": URL, "retries": 3}, "Extra inputs"),
        ({"kind": "ldap"}, "does not match any of the expected tags"),
    ],
)
def test_invalid_sources_are_rejected(source: dict[str, Any], message: str) -> None:
    """Bad URL templates, plain HTTP, half a client key pair, typos and unknown kinds fail."""
    with pytest.raises(ValidationError, match=message):
        MandateSettings.model_validate({"source": source})


def test_plain_http_needs_an_explicit_opt_in() -> None:
    """http:// is accepted only with allow_plain_http (tests, same-host registries)."""
    s = HttpSourceSettings(url_template="http://127.0.0.1:1/{kvk}", allow_plain_http=True)
    assert s.url_template.startswith("http://")


def test_lock_must_outlive_a_lookup() -> None:
    """lock_ttl shorter than the HTTP source's time budget is refused (two replicas would call)."""
    with pytest.raises(ValidationError, match="lock_ttl"):
        MandateSettings.model_validate(
            {"source": {"kind": "http", "url_template": URL, "total_timeout": 20}, "lock_ttl": 15}
        )


async def test_each_kind_builds_its_source() -> None:
    """kind=file builds a FileMandateSource, kind=http an HttpMandateSource."""
    file_source = build_source(FileSourceSettings(path=EXAMPLE))
    http_source = build_source(HttpSourceSettings(url_template=URL))
    assert isinstance(file_source, FileMandateSource)
    assert isinstance(http_source, HttpMandateSource)
    await file_source.close()
    await http_source.close()


async def test_service_from_settings_serves_the_example_file() -> None:
    """The demo wiring: a service over the example file answers from the store."""
    settings = MandateSettings(source=FileSourceSettings(path=EXAMPLE))
    freshness = Freshness(dt.timedelta(seconds=60), dt.timedelta(seconds=900))
    svc = MandateService.from_settings(MemoryStore(), settings, freshness)
    try:
        assert len((await svc.lookup("11111111")).mandates) == 4
    finally:
        await svc.close()
