"""nginx carrying the bytes, the gateway answering its auth subrequests (forward-auth mode).

nginx runs the shipped ``deploy/nginx/gateway-forward-auth.conf`` as it is,
with only its three addresses (gateway, portal, cache folder) and the listen
port set for this run, the same way the test suite runs it. The gateway is the
bench's usual gateway instance with ``forward_auth`` on and nginx (loopback)
as its trusted proxy. Both are pinned to the server core and both count: the
row's CPU per request is nginx's plus the gateway's.

Sessions are the gateway's own; the auth cache (keyed by the session cookie and
the employer part of the path, each answer for up to ``forward_auth.cache_seconds``,
60 s by default) decides how many requests reach Python at all.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.harness import free_port, wait_http
from bench.targets import PAGE_PATH, Env, Row, Target
from bench.targets.gateway import GatewayInstance
from bench.targets.nginx import main_config

ROOT = Path(__file__).resolve().parents[2]


def _auth_cache_default() -> int:
    from gateway.config import ForwardAuthSettings

    default = ForwardAuthSettings.model_fields["cache_seconds"].default
    assert isinstance(default, int)
    return default


FULL_CYCLE = _auth_cache_default() + 4
"""The 10,000-session rows measure at least this long: every session's cached answer
expires once inside the window (the answers of the visit before it live up to
``forward_auth.cache_seconds``), so it holds the steady rate of renewals."""
SHIPPED = ROOT / "deploy" / "nginx" / "gateway-forward-auth.conf"
NGINX = "/usr/sbin/nginx"


def shipped_config(folder: Path, gateway: str, portal: str, port: int) -> str:
    """The shipped conf.d file with its addresses replaced (and nothing else)."""
    text = SHIPPED.read_text()
    for old, new in {
        "server 127.0.0.1:8080;": f"server {gateway};",
        "server 127.0.0.1:9000;": f"server {portal};",
        "/var/cache/nginx/gateway-auth": str(folder / "auth-cache"),
        "listen 80;": f"listen 127.0.0.1:{port};",
    }.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


@dataclass
class ForwardAuth(Target):
    """nginx + the gateway in forward-auth mode, authenticated requests."""

    instance: GatewayInstance | None = None
    workers: int = 1
    """nginx workers and gateway workers; more than one: unpinned (the whole-box row)."""

    def start(self, env: Env) -> None:
        self.instance = GatewayInstance(
            self.name,
            workers=self.workers,
            config_overrides={
                "forward_auth": {"enabled": True},
                "server": {"trusted_proxies": ["127.0.0.1/32"]},
            },
        )
        self.instance.start(env)
        folder = env.folder(self.name + "-nginx")
        port = free_port()
        gateway = self.instance.base_url.removeprefix("http://")
        portal = env.upstream_url.removeprefix("http://")
        (folder / "nginx.conf").write_text(
            main_config(
                folder,
                f"{folder / 'access.log'} combined buffer=64k",
                shipped_config(folder, gateway, portal, port),
                workers=self.workers,
            )
        )
        args = [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", "stderr"]
        subprocess.run([*args, "-t"], check=True, capture_output=True)
        log = folder / "nginx.log"
        proc = env.processes.start(env.server_cmd(args) if self.workers == 1 else args, log=log)
        self.base_url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.base_url}/_gateway/healthz", proc=proc, log=log)
        self._pids = [proc.pid, self.instance.pid]

    def auth_url(self) -> str:
        return self.base_url + PAGE_PATH

    def sessions(self, env: Env, count: int) -> list[str]:
        assert self.instance is not None
        return self.instance.sessions(env, count)


def targets() -> list[Target]:
    bare = ("bare", "bare-uvloop")
    return [
        ForwardAuth(
            name="forward-auth",
            ours=True,
            rows=(
                Row(
                    "fa-auth-10k",
                    "nginx + gateway forward-auth, authenticated, 10,000 sessions",
                    "forward-auth",
                    "auth",
                    sessions=10_000,
                    compare_with=("mellon-auth", *bare),
                    min_seconds=FULL_CYCLE,
                ),
            ),
        ),
        ForwardAuth(
            name="forward-auth-box",
            ours=True,
            workers=2,
            rows=(
                Row(
                    "box-fa-auth-10k",
                    "whole box: nginx (2 workers) + gateway forward-auth (workers: 2), "
                    "authenticated, 10,000 sessions",
                    "forward-auth-box",
                    "auth",
                    sessions=10_000,
                    compare_with=("box-mellon-auth",),
                    min_seconds=FULL_CYCLE,
                ),
            ),
        ),
    ]
