"""The compose setup: well formed, its commands real, its configs valid as mounted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from gateway.store.factory import parse_store_url
from gateway_dev.simulator import load_simulator_settings
from gateway_dev.simulator.settings import SimulatorSettings
from tests.support.deploy import (
    COMPOSE,
    REPO,
    CheckedConfig,
    check_gateway_config,
    command_problem,
    compose_binds,
    lay_out_mounts,
    parse_dockerfile,
    stages,
)
from tests.support.redis import RedisServer

TOP_LEVEL = {"name", "services", "volumes", "networks", "configs", "secrets"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
GATEWAY_IMAGE = "eherkenning-gateway:dev"
# The services that run the development package next to the image's gateway.
DEV_SERVICES = {"keys", "portal", "simulator"}


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


def _binds(service: dict[str, Any]) -> list[tuple[str, PurePosixPath, bool]]:
    return compose_binds(service)


def _gateway_config(compose: dict[str, Any]) -> tuple[CheckedConfig, dict[str, Any]]:
    gateway = _services(compose)["gateway"]
    env = gateway.get("environment", {})
    target = PurePosixPath(env["GATEWAY_CONFIG"])
    source = next(s for s, t, _ in _binds(gateway) if t == target)
    text = (COMPOSE / source).read_text()
    return check_gateway_config(text, env, f"compose {source}"), gateway


def test_compose_file_is_well_formed(compose: dict[str, Any]) -> None:
    """Only known top-level keys; every service has an image; named volumes are declared."""
    assert {k for k in compose if not k.startswith("x-")} <= TOP_LEVEL
    assert "version" not in compose, "obsolete in the Compose specification"
    assert set(_services(compose)) == {"redis", "keys", "portal", "simulator", "gateway"}
    declared = set(compose.get("volumes") or {})
    for name, service in _services(compose).items():
        assert "image" in service, name
        for source, _target, _ro in _binds(service):
            if source.startswith("."):
                assert (COMPOSE / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


def test_gateway_image_is_built_from_this_repository(compose: dict[str, Any]) -> None:
    """Services on the gateway image build it from the repository's Dockerfile, locked down."""
    users = [s for s in _services(compose).values() if s["image"] == GATEWAY_IMAGE]
    assert len(users) == 4
    for service in users:
        build = service["build"]
        assert (COMPOSE / build["context"] / build["dockerfile"]).resolve() == REPO / "Dockerfile"
        assert service["read_only"] is True
        assert "/tmp" in service["tmpfs"]
        assert service["cap_drop"] == ["ALL"]


def test_commands_are_real_gateway_commands(compose: dict[str, Any]) -> None:
    """Every command given to the gateway image's ENTRYPOINT parses as a gateway subcommand."""
    for name, service in _services(compose).items():
        if service["image"] != GATEWAY_IMAGE or "entrypoint" in service:
            continue
        assert command_problem(service["command"]) is None, name


def _dev_package_mounts(service: dict[str, Any]) -> list[tuple[str, PurePosixPath, bool]]:
    return [
        (source, target, ro)
        for source, target, ro in _binds(service)
        if source.startswith(".") and (COMPOSE / source).resolve() == REPO / "gateway_dev"
    ]


def test_only_the_development_services_get_the_development_package(
    compose: dict[str, Any],
) -> None:
    """keys, portal and simulator mount gateway_dev/ read-only on their PYTHONPATH; the gateway
    service runs the image as production does, without it."""
    for name, service in _services(compose).items():
        mounts = _dev_package_mounts(service)
        environment = service.get("environment") or {}
        if name in DEV_SERVICES:
            ((_, target, read_only),) = mounts
            assert read_only, name
            assert target.name == "gateway_dev", name
            assert environment["PYTHONPATH"] == str(target.parent), name
        else:
            assert mounts == [], name
            assert "PYTHONPATH" not in environment, name


def test_development_services_run_commands_of_the_development_package(
    compose: dict[str, Any],
) -> None:
    """portal and simulator run `python -m gateway_dev` with a command its parser accepts."""
    from gateway_dev.cli import parser

    for name in ("portal", "simulator"):
        service = _services(compose)[name]
        assert service["entrypoint"] == ["python", "-m", "gateway_dev"], name
        parser().parse_args(service["command"])  # exits on an unknown command or flag


def test_depends_on_conditions_can_be_met(compose: dict[str, Any]) -> None:
    """Dependencies exist; service_healthy ones have a healthcheck; the gateway waits for all."""
    services = _services(compose)
    for name, service in services.items():
        for dep, spec in service.get("depends_on", {}).items():
            assert dep in services, f"{name} -> {dep}"
            assert spec["condition"] in CONDITIONS
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
            if spec["condition"] == "service_completed_successfully":
                assert services[dep].get("restart") == "no"
    assert set(services["gateway"]["depends_on"]) == {"keys", "redis", "portal", "simulator"}


def _listen_port(service: dict[str, Any], config: CheckedConfig | None) -> int:
    command = service.get("command", [])
    if "--port" in command:
        return int(command[command.index("--port") + 1])
    assert config is not None
    return config.config.server.port


def test_healthchecks_probe_what_each_service_serves(compose: dict[str, Any]) -> None:
    """Each healthcheck asks its service's listening port; the gateway's, its liveness route."""
    checked, _ = _gateway_config(compose)
    final = stages(parse_dockerfile((REPO / "Dockerfile").read_text()))[-1]
    image_check = next(i for i in final if i.keyword == "HEALTHCHECK").body()
    for name in ("portal", "simulator", "gateway"):
        service = _services(compose)[name]
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], name
        url = re.search(r"'(http://127\.0\.0\.1:(\d+)(/[^']*))'", test[3])
        assert url is not None, name
        port = _listen_port(service, checked if name == "gateway" else None)
        assert int(url.group(2)) == port, name
    gateway_script = _services(compose)["gateway"]["healthcheck"]["test"][3]
    assert gateway_script in image_check, "the same check as the image's HEALTHCHECK"
    assert f"{checked.config.server.reserved_prefix}healthz" in gateway_script


def test_gateway_config_validates_with_every_file_mounted(compose: dict[str, Any]) -> None:
    """The gateway config is valid, --config equals GATEWAY_CONFIG, and its files are mounted."""
    checked, gateway = _gateway_config(compose)
    command = gateway["command"]
    assert command[command.index("--config") + 1] == gateway["environment"]["GATEWAY_CONFIG"]
    assert not checked.unverified
    mounts = _binds(gateway)
    for path in checked.file_paths():
        covering = [(s, t, ro) for s, t, ro in mounts if t == path or t in path.parents]
        assert covering, f"{path}: not mounted into the gateway"
        assert all(ro for _, _, ro in covering), f"{path}: mounted writable"


def test_keys_service_creates_every_key_file_the_gateway_names(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """Running the keys service's script as a process writes each file the gateway config names."""
    checked, gateway = _gateway_config(compose)
    keys = _services(compose)["keys"]
    entry = keys["entrypoint"]
    assert entry[0] == "python"
    script_target = PurePosixPath(entry[1])
    out_volume = next(s for s, t, _ in _binds(keys) if t == PurePosixPath(entry[2]))
    keys_dir = next(t for s, t, _ in _binds(gateway) if s == out_volume)
    # The script and the development package as the service mounts them.
    root = tmp_path / "keys-service"
    placed = lay_out_mounts(keys, root)
    pythonpath = root / PurePosixPath(keys["environment"]["PYTHONPATH"]).relative_to("/")
    done = subprocess.run(
        [sys.executable, str(placed[script_target]), str(tmp_path / "k")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(pythonpath)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    made = {p.name for p in (tmp_path / "k").iterdir()}
    named = {p.name for p in checked.file_paths() if keys_dir in p.parents}
    assert named
    assert named <= made
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in (tmp_path / "k").iterdir())


def _mounted_simulator(compose: dict[str, Any], root: Path) -> SimulatorSettings:
    """The simulator's settings read from a copy of its mounts under ``root``."""
    simulator = _services(compose)["simulator"]
    lay_out_mounts(simulator, root)
    command = simulator["command"]
    config = PurePosixPath(command[command.index("--config") + 1])
    return load_simulator_settings(root / config.relative_to("/"))


def test_simulator_config_validates_as_mounted(compose: dict[str, Any], tmp_path: Path) -> None:
    """The simulator's config, laid out as compose mounts it, loads with its scenarios."""
    assert command_problem(_services(compose)["simulator"]["command"]) is None
    settings = _mounted_simulator(compose, tmp_path)
    assert settings.scenarios_file is not None and settings.scenarios_file.exists()


def _names(compose: dict[str, Any]) -> dict[str, str]:
    """Host name -> service, for service names and network aliases."""
    names = {}
    for name, service in _services(compose).items():
        names[name] = name
        for net in (service.get("networks") or {}).values():
            for alias in (net or {}).get("aliases", []):
                names[alias] = name
    return names


def test_every_address_in_the_configs_reaches_a_service(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """Each host:port in the gateway and simulator configs is a compose service listening there."""
    checked, _ = _gateway_config(compose)
    names = _names(compose)
    simulator = _mounted_simulator(compose, tmp_path)
    urls = [str(r.upstream) for r in checked.config.routes]
    urls.append(checked.sections["saml"].broker_metadata)
    assert simulator.sp_metadata is not None and simulator.base_url is not None
    urls += [simulator.sp_metadata, simulator.base_url]
    store = parse_store_url(checked.sections["store"].url)
    targets = [(host, port) for host, port in store.hosts]
    for url in urls:
        parts = urlsplit(url)
        targets.append((str(parts.hostname), parts.port or 80))
    for host, port in targets:
        assert host in names, f"{host}: no such service or alias"
        service = _services(compose)[names[host]]
        if names[host] == "redis":
            assert port == 6379
        else:
            listen = _listen_port(service, checked if names[host] == "gateway" else None)
            assert port == listen, f"{host}:{port} but the service listens on {listen}"


def test_published_urls_are_what_browsers_use(compose: dict[str, Any], tmp_path: Path) -> None:
    """The public URLs are *.localhost names whose ports compose publishes on loopback."""
    checked, _ = _gateway_config(compose)
    simulator = _mounted_simulator(compose, tmp_path)
    assert simulator.base_url is not None
    for url, service in (
        (str(checked.config.server.public_url), "gateway"),
        (checked.sections["saml"].acs_url, "gateway"),
        (simulator.base_url, "simulator"),
    ):
        parts = urlsplit(url)
        assert str(parts.hostname).endswith(".localhost")
        assert f"127.0.0.1:{parts.port}:{parts.port}" in _services(compose)[service]["ports"]


def test_stop_grace_exceeds_the_drain(compose: dict[str, Any]) -> None:
    """compose's stop_grace_period leaves the gateway time to drain before SIGKILL."""
    checked, gateway = _gateway_config(compose)
    grace = int(str(gateway["stop_grace_period"]).removesuffix("s"))
    server = checked.config.server
    assert grace > server.drain_delay_seconds + server.shutdown_grace_seconds


def test_compose_redis_runs_with_the_documented_memory_policy(compose: dict[str, Any]) -> None:
    """The compose Redis command, run by a real redis-server, has docs/state.md's policy."""
    command = _services(compose)["redis"]["command"]
    assert command[0] == "redis-server"
    documented = (REPO / "docs" / "state.md").read_text()
    snippet = documented.split("### Redis settings", 1)[1].split("```conf\n", 1)[1]
    policy = re.search(r"^maxmemory-policy (\S+)$", snippet, re.M)
    assert policy is not None
    with RedisServer(extra_args=command[1:]) as redis:
        got = redis.cli("CONFIG", "GET", "maxmemory-policy").split()
        assert got == ["maxmemory-policy", policy.group(1)]
        assert int(redis.cli("CONFIG", "GET", "maxmemory").split()[1]) > 0
