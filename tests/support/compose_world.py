"""deploy/compose/compose.yaml run as plain processes, since no container engine runs here.

What compose would do, done by hand and read from compose.yaml itself:

- every service name and network alias resolves to the loopback address, and
  each port a service listens on gets a free loopback port (what the compose
  network and the published ports give the containers and the browser);
- each service's bind mounts are copied under one root directory at their
  container paths; named volumes are empty directories there;
- the one-shot ``keys`` service runs its own script into its volume;
- ``redis`` is a real ``redis-server``; ``gateway`` is ``python -m gateway
  <command>`` (the image's entrypoint) and ``portal`` and ``simulator`` are
  their entrypoint's ``python -m gateway_dev <command>``, with the service's
  command and environment (``PYTHONPATH`` names the mounted copy of
  ``gateway_dev/``), the mounted configuration files unchanged except for those
  addresses and the container paths (the gateway's listen address comes from
  ``GATEWAY__SERVER__*`` variables, as an operator would set it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from tests.support.deploy import COMPOSE, compose_binds, lay_out_mounts, load_one
from tests.support.processes import GatewayProcess, free_port
from tests.support.redis import RedisServer


def _listen_port(service: dict[str, Any], config_port: int | None = None) -> int:
    command = service.get("command", [])
    if "--port" in command:
        return int(command[command.index("--port") + 1])
    if service.get("image", "").startswith("redis"):
        return 6379
    assert config_port is not None
    return config_port


class ComposeWorld:
    """The compose services as processes on loopback; ``start()``, then ``stop()``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.compose = load_one(COMPOSE / "compose.yaml")
        self.services: dict[str, dict[str, Any]] = self.compose["services"]
        self.mounts: dict[str, dict[PurePosixPath, Path]] = {}
        self.addresses: dict[tuple[str, int], int] = {}
        self.names: dict[str, str] = {}
        self.redis: RedisServer | None = None
        self.processes: dict[str, GatewayProcess] = {}

    # -- layout ---------------------------------------------------------------

    def _host_path(self, service: str, path: str) -> str:
        """A container path of ``service`` as a path under the root (via its mounts)."""
        pure = PurePosixPath(path)
        for target in self.mounts[service]:
            if pure == target or target in pure.parents:
                return str(self.root / pure.relative_to("/"))
        return path

    def _address(self, url: str) -> str:
        """``url`` with a compose host:port replaced by the loopback port serving it."""
        parts = urlsplit(url)
        if parts.hostname not in self.names:
            return url
        port = parts.port or (443 if parts.scheme.endswith("s") else 80)
        mapped = self.addresses[(self.names[parts.hostname], port)]
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo + '@' if userinfo else ''}127.0.0.1:{mapped}"
        return urlunsplit(parts._replace(netloc=netloc))

    def _rewrite(self, service: str, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._rewrite(service, v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._rewrite(service, v) for v in value]
        if isinstance(value, str):
            if "://" in value:
                return self._address(value)
            if value.startswith("/"):
                return self._host_path(service, value)
        return value

    def _rewrite_file(self, service: str, container_path: str) -> Path:
        path = Path(self._host_path(service, container_path))
        data = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump(self._rewrite(service, data), sort_keys=False))
        return path

    def gateway_config(self) -> tuple[Path, dict[str, Any]]:
        """The gateway's configuration file (as laid out) and its data."""
        env = self.services["gateway"]["environment"]
        path = Path(self._host_path("gateway", env["GATEWAY_CONFIG"]))
        return path, yaml.safe_load(path.read_text())

    def lay_out(self) -> None:
        """Mounts copied, addresses assigned, keys made, configurations rewritten."""
        for name, service in self.services.items():
            self.names[name] = name
            for net in (service.get("networks") or {}).values():
                for alias in (net or {}).get("aliases", []):
                    self.names[alias] = name
            self.mounts[name] = lay_out_mounts(service, self.root)
        env = self.services["gateway"]["environment"]
        raw = yaml.safe_load(Path(self._host_path("gateway", env["GATEWAY_CONFIG"])).read_text())
        for name, service in self.services.items():
            if name == "keys":
                continue
            config_port = raw["server"]["port"] if name == "gateway" else None
            self.addresses[(name, _listen_port(service, config_port))] = free_port()
        self._make_keys()
        self._rewrite_file("gateway", env["GATEWAY_CONFIG"])
        command = self.services["simulator"]["command"]
        self._rewrite_file("simulator", command[command.index("--config") + 1])

    def _make_keys(self) -> None:
        """The keys service's entrypoint: its script, writing into its volume."""
        entry = self.services["keys"]["entrypoint"]
        assert entry[0] == "python"
        script = self._host_path("keys", entry[1])
        target = self._host_path("keys", entry[2])
        # --owner is left out: it hands the files to the image's user (10001).
        done = subprocess.run(
            [sys.executable, script, target],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.root,
            env={**os.environ, **self._environment("keys")},
            check=False,
        )
        assert done.returncode == 0, done.stderr
        # The gateway reads the same volume, mounted elsewhere if so declared.
        volume = next(s for s, t, _ in compose_binds(self.services["keys"]) if str(t) == entry[2])
        for source, target_path, _ in compose_binds(self.services["gateway"]):
            if source == volume and str(target_path) != entry[2]:
                gateway_dir = self.root / target_path.relative_to("/")
                gateway_dir.mkdir(parents=True, exist_ok=True)
                for file in Path(target).iterdir():
                    (gateway_dir / file.name).write_bytes(file.read_bytes())

    # -- processes ------------------------------------------------------------

    def _command(self, name: str) -> list[str]:
        """The service's command with container paths and listen address mapped."""
        command = list(self.services[name]["command"])
        out = []
        for i, word in enumerate(command):
            previous = command[i - 1] if i else ""
            if previous == "--host":
                out.append("127.0.0.1")
            elif previous == "--port":
                out.append(str(self.addresses[(name, int(word))]))
            elif word.startswith("/"):
                out.append(self._host_path(name, word))
            else:
                out.append(word)
        return out

    def _environment(self, name: str) -> dict[str, str]:
        """The service's environment with container paths mapped under the root."""
        env = self.services[name].get("environment") or {}
        return {k: self._host_path(name, str(v)) for k, v in env.items()}

    def _module(self, name: str) -> str:
        """The package the service's entrypoint runs: the image's ``gateway`` unless overridden."""
        entry = self.services[name].get("entrypoint")
        if entry is None:
            return "gateway"
        assert entry[:2] == ["python", "-m"] and len(entry) == 3, entry
        return str(entry[2])

    def url(self, service: str) -> str:
        port = next(p for (s, _), p in self.addresses.items() if s == service)
        return f"http://127.0.0.1:{port}"

    async def start(self) -> None:
        self.lay_out()
        redis_port = next(p for (s, _), p in self.addresses.items() if s == "redis")
        self.redis = RedisServer(port=redis_port)
        self.redis.start()
        for name in ("portal", "simulator"):
            self.processes[name] = GatewayProcess(
                self._command(name),
                env=self._environment(name),
                cwd=self.root,
                module=self._module(name),
            )
        await self.processes["portal"].wait_http(self.url("portal") + "/", timeout=60)
        await self.processes["simulator"].wait_http(
            self.url("simulator") + "/saml/metadata", timeout=60
        )
        env = self._environment("gateway")
        port = next(p for (s, _), p in self.addresses.items() if s == "gateway")
        env |= {"GATEWAY__SERVER__HOST": "127.0.0.1", "GATEWAY__SERVER__PORT": str(port)}
        self.processes["gateway"] = GatewayProcess(
            self._command("gateway"), env=env, cwd=self.root, module=self._module("gateway")
        )
        await self.processes["gateway"].wait_http(
            self.url("gateway") + "/_gateway/readyz", timeout=90
        )

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()
        if self.redis is not None:
            self.redis.cleanup()
