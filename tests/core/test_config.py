"""Configuration loading: every problem at once, with file, path and line; env overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import RouteSettings, load_config, parse_config
from gateway.errors import ConfigInvalid

GOOD = """
server:
  port: 8080
routes:
  - name: portal
    match: { path: / }
    upstream: http://portal:8080
    policy: public
"""


def _problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        parse_config(text, file="routes.yaml", environ=environ or {})
    return [str(p) for p in info.value.problems]


def test_valid_config_loads_with_safe_defaults() -> None:
    """A minimal file loads; routes default to authenticated, the prefix to /_gateway/."""
    config = parse_config(GOOD, file="f.yaml", environ={})
    assert RouteSettings.model_fields["policy"].default == "authenticated"
    assert config.store.url == "memory://"
    assert config.server.reserved_prefix == "/_gateway/"
    assert "x-gateway-identity" in {h.lower() for h in config.server.deny_headers}


def test_every_problem_reported_with_file_path_and_line() -> None:
    """All problems come back together, each naming file, path and line."""
    text = """
server:
  prot: 80
routes:
  - name: portal
    match: { path: nope, methods: [GTE] }
    upstream: ftp://x
    policy: privat
"""
    problems = _problems(text)
    assert len(problems) == 5
    joined = "\n".join(problems)
    assert "routes.yaml: server.prot: line 3: unknown key" in joined
    assert "routes.yaml: routes[0].match.path: line 6: must start with /" in joined
    assert "routes[0].match.methods" in joined and "GTE" in joined
    assert "routes[0].upstream: line 7" in joined
    assert "routes[0].policy: line 8" in joined


def test_cross_field_problems_reported_alongside_field_errors() -> None:
    """Duplicate names and reserved paths are reported even when other fields are wrong."""
    text = """
server: { workers: 0 }
routes:
  - { name: a, match: { path: /_gateway/x }, upstream: "http://u" }
  - { name: a, match: { path: /y }, upstream: "http://u" }
  - { name: b, match: { path: "/w/{x", type: pattern }, upstream: "http://u" }
"""
    joined = "\n".join(_problems(text))
    assert "server.workers" in joined
    assert "routes[0].match.path" in joined and "reserved" in joined
    assert "routes[1].name" in joined and "duplicate" in joined
    assert "routes[2].match.path" in joined and "unbalanced" in joined


def test_yaml_syntax_error_names_line() -> None:
    """Broken YAML is reported with its line and column."""
    (problem,) = _problems("routes:\n  - name: [unclosed\n")
    assert problem.startswith("routes.yaml: <root>: not valid YAML: line")


def test_missing_routes_is_an_error() -> None:
    """A file without routes is refused: the gateway would serve nothing."""
    assert any("routes:" in p and "required" in p for p in _problems("server: {port: 1}\n"))


def test_env_overrides_by_path_position_and_route_name() -> None:
    """GATEWAY__ variables override values by path, list position or route name, typed as YAML."""
    config = parse_config(
        GOOD,
        file="f.yaml",
        environ={
            "GATEWAY__SERVER__PORT": "9000",
            "GATEWAY__SERVER__TRUSTED_PROXIES": "[10.0.0.0/8]",
            "GATEWAY__ROUTES__PORTAL__UPSTREAM": "http://other:1",
            "GATEWAY__ROUTES__0__POLICY": "public",
            "UNRELATED": "x",
        },
    )
    assert config.server.port == 9000
    assert str(config.server.trusted_proxies[0]) == "10.0.0.0/8"
    assert str(config.routes[0].upstream) == "http://other:1/"
    assert config.routes[0].policy == "public"


def test_env_override_problem_names_the_variable() -> None:
    """A bad override is reported with the variable's name, not a YAML line."""
    (problem,) = _problems(GOOD, {"GATEWAY__SERVER__PORT": "lots"})
    assert "server.port" in problem and "GATEWAY__SERVER__PORT" in problem


def test_env_override_of_unknown_route_is_reported() -> None:
    """An override naming a route that does not exist is an error, not silently ignored."""
    (problem,) = _problems(GOOD, {"GATEWAY__ROUTES__NOPE__UPSTREAM": "http://x"})
    assert "GATEWAY__ROUTES__NOPE__UPSTREAM" in problem


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    """A missing file is a config problem naming the file."""
    with pytest.raises(ConfigInvalid) as info:
        load_config(tmp_path / "missing.yaml", environ={})
    assert "missing.yaml" in str(info.value)


def test_shipped_configs_are_valid() -> None:
    """The example and demo files in config/ validate."""
    root = Path(__file__).resolve().parents[2]
    for name in ("gateway.example.yaml", "demo.yaml"):
        load_config(root / "config" / name, environ={})


def test_check_config_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config exits 0 and lists routes for a good file, 2 with every problem for a bad one."""
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert main(["check-config", str(good)]) == 0
    assert "portal" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("port: 8080", "port: 8080\n  colour: red"))
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: server.colour" in err and "1 problem" in err


def test_config_schema_cli_prints_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """config-schema prints a JSON Schema that forbids unknown keys."""
    assert main(["config-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].endswith("2020-12/schema")
    assert schema["additionalProperties"] is False
    assert "routes" in schema["required"]


def test_mandate_staleness_is_one_setting(tmp_path: Path) -> None:
    """mandates.max_staleness is refused: sessions.mandate_max_staleness is the one limit."""
    from tests.support.login_world import gateway_config

    mandates = tmp_path / "m.yaml"
    mandates.write_text("version: 1\nmandates: []\n")
    data = gateway_config(tmp_path, 8080, "http://portal", "http://broker/md", mandates)
    data["mandates"]["max_staleness"] = 60
    import yaml

    problems = _problems(yaml.safe_dump(data))
    assert any(
        "mandates.max_staleness" in p and "sessions.mandate_max_staleness" in p for p in problems
    )
