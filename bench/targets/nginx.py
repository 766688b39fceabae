"""nginx (Debian's package): serving the page itself, and as a plain ``proxy_pass`` proxy.

Each nginx runs as one foreground process (``master_process off``), the way a
one-core server would run it, with every path inside the run's folder. It
writes an access log like the other servers (buffered, as nginx
configurations usually do), and keeps client connections open as long as
the load generator wants (``keepalive_requests``): the rows measure the cost
of a request, not of connection setup.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.harness import free_port, wait_http
from bench.targets import Env, Row, Target

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def main_config(folder: Path, access_log: str, http_body: str, *, workers: int = 1) -> str:
    """A whole nginx.conf: one foreground process (or a master and ``workers`` workers),
    every path in ``folder``, ``http_body``."""
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
daemon off;
master_process {"off" if workers == 1 else "on"};
worker_processes {workers};
pcre_jit on;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log {access_log};
{temp}
{http_body}
}}
"""


def start_nginx(
    env: Env,
    name: str,
    location_body: str = "",
    *,
    server_extra: str = "",
    http_extra: str = "",
    pin: bool = True,
) -> tuple[int, subprocess.Popen[bytes]]:
    """Start an nginx whose ``location /`` has ``location_body`` (empty: serve the page).

    ``server_extra`` and ``http_extra`` go into the ``server`` and ``http`` blocks
    (more locations, more upstreams: an ``auth_request`` setup needs both); a
    non-empty ``location_body`` may ``proxy_pass http://portal``, the upstream
    page's connection pool. Returns the port and the process; ``pin``: on the
    server core (else on the load side).
    """
    folder = env.folder(name)
    (folder / "page.html").write_bytes(env.page)
    port = free_port()
    body = location_body or "root {folder}; default_type text/html; try_files /page.html =404;"
    upstream = ""
    if location_body:
        # A pool of idle upstream connections, as a proxy to one portal is configured.
        upstream = (
            f"    upstream portal {{ server {env.upstream_url.removeprefix('http://')}; "
            "keepalive 64; keepalive_requests 1000000; }"
        )
    log = "off" if name == "upstream" else f"{folder / 'access.log'} combined buffer=64k"
    (folder / "nginx.conf").write_text(
        main_config(
            folder,
            log,
            f"""    keepalive_requests 1000000;
    keepalive_timeout 75s;
{upstream}
{http_extra}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ {body.format(folder=folder)} }}
{server_extra}
    }}""",
        )
    )
    args = [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", "stderr"]
    check = subprocess.run([*args, "-t"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"nginx refused its configuration:\n{check.stderr}")
    cmd = env.server_cmd(args) if pin else args
    log_file = folder / "stderr.log"
    proc = env.processes.start(cmd, log=log_file)
    wait_http(f"http://127.0.0.1:{port}/", proc=proc, log=log_file)
    return port, proc


@dataclass
class Nginx(Target):
    location: str = ""

    def start(self, env: Env) -> None:
        port, proc = start_nginx(env, self.name, self.location)
        self.base_url = f"http://127.0.0.1:{port}"
        self._pids = [proc.pid]


PROXY_PASS = (
    "proxy_pass http://portal; proxy_http_version 1.1; "
    'proxy_set_header Connection ""; proxy_set_header Host $host; '
    "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"
)


def targets() -> list[Target]:
    return [
        Nginx(
            name="nginx-static",
            rows=(Row("nginx-static", "nginx, static file", "nginx-static", "page"),),
        ),
        Nginx(
            name="nginx-proxy",
            location=PROXY_PASS,
            rows=(Row("nginx-proxy", "nginx proxy_pass", "nginx-proxy", "page"),),
        ),
    ]
