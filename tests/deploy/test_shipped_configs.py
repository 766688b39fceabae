"""Every YAML file under config/ and deploy/ validates, and the schema tells the truth.

The files are found by globbing, so a file added later is covered without
touching this test: each must be one of the kinds below, or the test fails
and names it. Each gateway configuration (a file with ``routes``, or a
Kubernetes ConfigMap carrying one) must pass both the JSON Schema that
``gateway config-schema`` prints and ``gateway check-config`` with every file
it names laid out (keys, certificates, secrets: generated here, as a
deployment would mount them). A set of broken files must fail both.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest
import yaml

from gateway.cli import main
from gateway.config import loa_spellings, parse_config
from gateway.config_files import path_settings
from gateway.durations import Duration
from gateway.errors import ConfigInvalid
from gateway.identity import Loa
from gateway.mandates.file_source import parse_mandate_file
from gateway_dev.portal.demo_data import write_demo_mandates
from gateway_dev.simulator import load_simulator_settings
from gateway_dev.simulator.settings import load_scenarios
from tests.support.config_models import (
    all_models,
    example_documents,
    fill_optional_files,
    locations,
    mentions,
    value_at,
)
from tests.support.deploy import (
    COMPOSE,
    CONFIG_DIR,
    KUSTOMIZE,
    REPO,
    compose_mount_of,
    kustomize_build,
    lay_out_files,
    lay_out_mounts,
    load_one,
    shipped_yaml_files,
)

EXAMPLE = CONFIG_DIR / "gateway.example.yaml"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """What `gateway config-schema` prints, from a real process."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "config-schema"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=True,
    )
    loaded: dict[str, Any] = json.loads(done.stdout)
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


def _schema_errors(schema: dict[str, Any], data: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(data)
    ]


# ---------------------------------------------------------------- what each file is


def _kind(path: Path, doc: Any) -> str:
    """The kind of a shipped YAML file (one per file; unknown kinds fail the test)."""
    if not isinstance(doc, dict):
        return "unknown"
    if "apiVersion" in doc and "kind" in doc:
        return "kubernetes"
    if "routes" in doc:
        return "gateway"
    if "services" in doc and path.parent.name == "compose":
        return "compose"
    if set(doc) == {"scenarios"}:
        return "scenarios"
    if "generated" in doc and "mandates" in doc:
        return "demo-mandates"
    if "mandates" in doc:
        return "mandates"
    if "entity_id" in doc and "sp_metadata" in doc:
        return "simulator"
    if path.parent.name == "forward-auth":
        return "forward-auth"  # Traefik and Envoy: test_forward_auth_examples.py
    if "rule_files" in doc and "tests" in doc:
        return "promtool-tests"  # alert unit tests: test_deploy_observability.py
    return "unknown"


def _documents() -> Iterator[tuple[Path, Any]]:
    for path in shipped_yaml_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                yield path, doc


def _gateway_configs() -> list[tuple[str, dict[str, Any]]]:
    """(name, data) of every gateway configuration shipped, ConfigMap contents included."""
    out = []
    for path, doc in _documents():
        name = str(path.relative_to(REPO))
        if _kind(path, doc) == "gateway":
            out.append((name, doc))
        elif doc.get("kind") == "ConfigMap":
            for key, text in (doc.get("data") or {}).items():
                embedded = yaml.safe_load(text)
                if isinstance(embedded, dict) and "routes" in embedded:
                    out.append((f"{name}:{key}", embedded))
    return out


GATEWAY_CONFIGS = _gateway_configs()


def test_every_shipped_yaml_file_is_of_a_known_kind() -> None:
    """Each YAML under config/ and deploy/ is a kind some test validates (no stray files)."""
    kinds: dict[str, list[str]] = {}
    for path, doc in _documents():
        kinds.setdefault(_kind(path, doc), []).append(str(path.relative_to(REPO)))
    assert "unknown" not in kinds, f"no test knows these files: {kinds['unknown']}"
    assert len(GATEWAY_CONFIGS) >= 4, GATEWAY_CONFIGS


@pytest.mark.parametrize("path", shipped_yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_each_non_gateway_file_loads_with_its_own_loader(path: Path, tmp_path: Path) -> None:
    """Simulator, scenario and mandate files load with the loader that reads them in use."""
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        kind = _kind(path, doc)
        mount = compose_mount_of(path)
        if mount is not None:
            # Relative paths in it resolve where compose mounts it, next to its neighbours.
            service = load_one(COMPOSE / "compose.yaml")["services"][mount[0]]
            path = lay_out_mounts(service, tmp_path / "mounted")[mount[1]]
        if kind == "simulator":
            load_simulator_settings(path)
        elif kind == "scenarios":
            assert load_scenarios(path)
        elif kind == "mandates":
            assert parse_mandate_file(path)
        elif kind == "demo-mandates":
            assert write_demo_mandates(path, tmp_path / "mandates.yaml") > 0
            assert parse_mandate_file(tmp_path / "mandates.yaml")
        else:
            # gateway configs: the tests below; manifests and compose: test_deploy_*.
            assert kind in {"gateway", "kubernetes", "compose", "forward-auth", "promtool-tests"}, (
                path
            )


@pytest.mark.parametrize(("name", "data"), GATEWAY_CONFIGS, ids=[n for n, _ in GATEWAY_CONFIGS])
def test_shipped_gateway_config_passes_the_schema(
    schema: dict[str, Any], name: str, data: dict[str, Any]
) -> None:
    """`gateway config-schema` accepts every shipped gateway configuration as written."""
    assert _schema_errors(schema, data) == []


@pytest.mark.parametrize(("name", "data"), GATEWAY_CONFIGS, ids=[n for n, _ in GATEWAY_CONFIGS])
def test_shipped_gateway_config_passes_check_config_with_its_files(
    name: str,
    data: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`gateway check-config` passes each shipped configuration with its files laid out."""
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(lay_out_files(data, tmp_path / "files"), sort_keys=False))
    code = main(["check-config", str(path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "warning" not in captured.err


def test_production_overlay_config_passes_schema_and_check_config(
    schema: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The production rendering (ConfigMap file plus the overlay's GATEWAY__ variables) passes."""
    objects = kustomize_build(KUSTOMIZE / "overlays" / "production")
    (container,) = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"][
        "spec"
    ]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("GATEWAY__")}
    assert env, "the overlay sets its addresses through GATEWAY__ variables"
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap"]
    data = yaml.safe_load(cm["data"]["gateway.yaml"])
    effective = parse_config(yaml.safe_dump(data), file="overlay", environ=env)
    assert effective.routes
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(lay_out_files(data, tmp_path / "files", environ=env)))
    import os

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        code = main(["check-config", str(path)])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert code == 0, capsys.readouterr().err


# ---------------------------------------------------------------- employers need a scope

_EMPLOYER_WORDS = re.compile(r"werkgever|employer", re.IGNORECASE)
_EMPLOYER_PARAMS = re.compile(r"\{(kvk|werkgever\w*|employer\w*|fund_number|fondsnummer)[:}]")


def _names_employers(path: str) -> bool:
    return bool(_EMPLOYER_WORDS.search(path) or _EMPLOYER_PARAMS.search(path))


@pytest.mark.parametrize(("name", "data"), GATEWAY_CONFIGS, ids=[n for n, _ in GATEWAY_CONFIGS])
def test_every_route_naming_employers_has_an_employer_scope(
    name: str, data: dict[str, Any]
) -> None:
    """A route whose path names employers checks the employer (else no 403 for a foreign one)."""
    config = parse_config(yaml.safe_dump(data), file=name, environ={})
    employer_routes = [r for r in config.routes if _names_employers(r.match.path)]
    unscoped = [r.name for r in employer_routes if not r.employer_scope]
    assert not unscoped, f"{name}: routes {unscoped} name employers but check none"


def test_the_employer_route_rule_recognises_employer_paths() -> None:
    """The rule above sees the shipped employer pages and leaves other paths alone."""
    assert _names_employers("/werkgevers/{kvk:[0-9]{8}}/{rest:.*}")
    assert _names_employers("/api/{employer_id}/x")
    assert _names_employers("/fondsen/{fund_number}")
    assert not _names_employers("/static")
    assert not _names_employers("/")


# ---------------------------------------------------------------- the schema tells the truth


def test_every_duration_setting_uses_the_duration_type() -> None:
    """A timedelta setting is a `Duration` (seconds or ISO 8601), so schema and loader agree."""
    duration_validator = get_args(Duration)[1]
    for model in all_models():
        for name, field in model.model_fields.items():
            if mentions(field.annotation, dt.timedelta):
                assert duration_validator in field.metadata, f"{model.__name__}.{name}"


def _example() -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(data, dict)
    return data


def _set(data: Any, loc: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    target = out
    for part in loc[:-1]:
        target = target[part]
    target[loc[-1]] = value
    assert isinstance(out, dict)
    return out


def _variants() -> Iterator[tuple[str, dict[str, Any]]]:
    """The example with each level and duration setting in every accepted spelling."""
    example = _example()
    for loc, model, name in locations(example):
        annotation = model.model_fields[name].annotation
        key = ".".join(map(str, loc))
        if mentions(annotation, Loa):
            for loa in Loa:
                for spelling in loa_spellings(loa):
                    yield f"{key}={spelling}", _set(example, loc, spelling)
        elif mentions(annotation, dt.timedelta):
            current = parse_config(yaml.safe_dump(example), file="x", environ={})
            value: dt.timedelta = value_at(current, loc)
            seconds = int(value.total_seconds())
            hours, rest = divmod(seconds, 3600)
            minutes, secs = divmod(rest, 60)
            iso = "PT" + "".join(
                f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (secs, "S")) if n
            )
            for spelling in (seconds, float(seconds), iso):
                yield f"{key}={spelling}", _set(example, loc, spelling)


VARIANTS = list(_variants())


def test_variants_cover_levels_and_durations() -> None:
    """The valid variants include every level field and every duration field of the example."""
    keys = {name.split("=")[0] for name, _ in VARIANTS}
    assert {"saml.minimum_loa", "routes.1.min_loa", "sessions.idle_timeout"} <= keys


@pytest.mark.parametrize(("name", "data"), VARIANTS, ids=[n for n, _ in VARIANTS])
def test_schema_and_loader_accept_every_documented_spelling(
    schema: dict[str, Any], name: str, data: dict[str, Any]
) -> None:
    """Short level names, EH names, URNs, integer seconds and ISO durations pass both."""
    assert _schema_errors(schema, data) == []
    parse_config(yaml.safe_dump(data), file=name, environ={})


def _invalid(loc: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda data: _set(data, loc, value)


def _drop(*loc: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def edit(data: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(data)
        target = out
        for part in loc[:-1]:
            target = target[part]
        del target[loc[-1]]
        return out

    return edit


INVALID: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "unknown key": _invalid(("server", "prot"), 80),
    "quoted number": _invalid(("server", "port"), "8080"),
    "yes as a number": _invalid(("server", "workers"), True),
    "quoted boolean": _invalid(("logging", "access_log"), "no"),
    "number out of range": _invalid(("server", "port"), 70000),
    "unknown enum value": _invalid(("logging", "format"), "xml"),
    "unknown level": _invalid(("saml", "minimum_loa"), "loa5"),
    "level as number": _invalid(("saml", "minimum_loa"), 3),
    "duration in words": _invalid(("sessions", "idle_timeout"), "15 minutes"),
    "duration pydantic alone takes": _invalid(("sessions", "idle_timeout"), "1 day"),
    "duration as clock time": _invalid(("sessions", "idle_timeout"), "00:15:00"),
    "upstream not http": _invalid(("routes", 0, "upstream"), "ftp://portal.internal/"),
    "path without slash": _invalid(("routes", 0, "match", "path"), "static"),
    "unknown method": _invalid(("routes", 0, "match", "methods"), ["GTE"]),
    "bad reserved prefix": _invalid(("server", "reserved_prefix"), "/_gateway"),
    "strip prefix with trailing slash": _invalid(("routes", 1, "strip_prefix"), "/x/"),
    "route name with capitals": _invalid(("routes", 0, "name"), "Portal"),
    "header name with a space": _invalid(
        ("routes", 1, "request_headers", "set"), {"X Portal": "pme"}
    ),
    "header value with CR LF": _invalid(
        ("routes", 1, "request_headers", "set"), {"X-Portal": "pme\r\nX-Admin: 1"}
    ),
    "identity header Host": _invalid(("routes", 1, "identity_header"), "Host"),
    "identity header Cookie": _invalid(("tokens", "header_name"), "Cookie"),
    "hop-by-hop deny header": _invalid(("server", "deny_headers"), ["Connection"]),
    "framing header removed": _invalid(
        ("routes", 1, "response_headers", "remove"), ["Content-Length"]
    ),
    "request id header with a colon": _invalid(("server", "request_id_header"), "X-Id:"),
    "no routes": _drop("routes"),
    "empty routes": _invalid(("routes",), []),
    "policy misspelt": _invalid(("routes", 0, "policy"), "privat"),
    "employer scope location": _invalid(
        ("routes", 1, "employer_scope"), [{"location": "cookie", "name": "kvk"}]
    ),
    "service uuid": _invalid(("saml", "services", 0, "service_uuid"), "not-a-uuid"),
    "store url not text": _invalid(("store", "url"), 12),
    "section not a mapping": _invalid(("logging",), "json"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_broken_configs_fail_schema_and_check_config(
    case: str,
    schema: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each broken variant of the example fails the schema AND `check-config --skip-files`."""
    data = INVALID[case](_example())
    assert _schema_errors(schema, data), f"{case}: the schema accepts it"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["check-config", "--skip-files", str(path)]) == 2, f"{case}: check-config passes"
    assert str(path) in capsys.readouterr().err


def test_the_example_itself_passes_both(
    schema: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The base of the broken variants is valid: each failure above is the edit's."""
    assert _schema_errors(schema, _example()) == []
    assert main(["check-config", "--skip-files", str(EXAMPLE)]) == 0, capsys.readouterr().err


def test_configs_the_test_worlds_build_pass_the_schema(
    schema: dict[str, Any], tmp_path: Path
) -> None:
    """The login world's full configuration (every route option in use) passes the schema."""
    from tests.support.login_world import gateway_config

    mandates = tmp_path / "m.yaml"
    mandates.write_text("version: 1\nmandates: []\n")
    data = gateway_config(tmp_path, 8080, "http://127.0.0.1:9", "http://127.0.0.1:9/md", mandates)
    data = json.loads(json.dumps(data))
    assert _schema_errors(schema, data) == []
    parse_config(yaml.safe_dump(data), file="world", environ={})


@pytest.mark.parametrize(
    ("name", "text"), example_documents(EXAMPLE.read_text()), ids=lambda v: v[:40]
)
def test_every_file_setting_is_opened_by_check_config(name: str, text: str, tmp_path: Path) -> None:
    """Each file setting of the model, pointed at a missing file, is a problem for that key."""
    from gateway.config import check_config

    full = fill_optional_files(yaml.safe_load(text))
    laid = lay_out_files(full, tmp_path / "files")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(laid))
    assert check_config(path, environ={}).files_checked
    config = parse_config(yaml.safe_dump(laid), file="x", environ={})
    # Optional by design: an absent next/previous token key is not published yet;
    # the xmlsec1 path is accepted for old files and never used.
    optional = {("tokens", "keys", "next"), ("tokens", "keys", "previous")}
    optional.add(("saml", "xmlsec_binary"))
    locs = [loc for loc, _ in path_settings(config) if loc not in optional]
    assert len(locs) >= 12
    broken = laid
    for i, loc in enumerate(locs):
        broken = _set(broken, loc, str(tmp_path / "missing" / f"file-{i}"))
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(ConfigInvalid) as info:
        check_config(path, environ={})
    reported = {p.path for p in info.value.problems}
    for loc in locs:
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        assert key in reported, (key, info.value.problems)


@pytest.mark.parametrize(
    ("simulator", "gateway"),
    [
        (CONFIG_DIR / "simulator.example.yaml", EXAMPLE),
        (COMPOSE / "simulator.yaml", COMPOSE / "gateway.yaml"),
    ],
    ids=["example", "compose"],
)
def test_each_simulator_sends_the_service_uuid_its_gateway_registered(
    simulator: Path, gateway: Path
) -> None:
    """The simulator's ServiceUUID per ServiceID is the gateway's (else every login fails)."""
    sent = yaml.safe_load(simulator.read_text())["service_uuids"]
    services = yaml.safe_load(gateway.read_text())["saml"]["services"]
    assert sent == {s["service_id"]: s["service_uuid"] for s in services}


def test_the_documented_ci_check_of_the_configmap_runs(tmp_path: Path) -> None:
    """The docs/deploy.md snippet that checks the ConfigMap without Secrets succeeds as written."""
    doc = (REPO / "docs" / "deploy.md").read_text()
    section = doc.split("Check a changed ConfigMap in CI without the Secrets:", 1)[1]
    snippet = section.split("```sh\n", 1)[1].split("```", 1)[0]
    (tmp_path / "deploy").symlink_to(REPO / "deploy")
    bin_dir = str(Path(sys.executable).parent)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", snippet],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "OK (3 routes; the files it names were not opened)" in done.stdout
