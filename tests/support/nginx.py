"""A real nginx (Debian's package) on loopback, for tests that compare with it or sit behind it.

``./dev test`` installs the package; a missing binary fails the test that needs
it. nginx runs in the foreground as one process (no master, no daemon) with
every path inside a temporary folder, so nothing on the machine is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

NGINX = "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Nginx:
    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    def error_log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text() if path.exists() else ""


def _config(folder: Path, http_body: str) -> str:
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
daemon off;
master_process off;
worker_processes 1;
pcre_jit on;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} info;
events {{ worker_connections 512; }}
http {{
    access_log off;
{temp}
{http_body}
}}
"""


def _start(binary: str, folder: Path) -> subprocess.Popen[bytes]:
    """Check the configuration (``nginx -t``), then start nginx in the foreground."""
    args = [binary, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", "stderr"]
    check = subprocess.run([*args, "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@contextlib.asynccontextmanager
async def run_nginx(server_body: str) -> AsyncIterator[Nginx]:
    """Start nginx with one ``server`` whose body is ``server_body``; stop it afterwards."""
    port = free_port()
    http_body = f"server {{\n    listen 127.0.0.1:{port};\n{server_body}\n}}"
    async with run_nginx_http(lambda folder: http_body, port) as nginx:
        yield nginx


@contextlib.asynccontextmanager
async def run_nginx_http(http_body: Callable[[Path], str], port: int) -> AsyncIterator[Nginx]:
    """Start nginx with ``http_body(folder)`` inside ``http {}`` (a conf.d file), on ``port``."""
    binary = shutil.which("nginx") or NGINX
    assert Path(binary).exists(), "nginx is not installed (./dev test installs it)"
    folder = Path(tempfile.mkdtemp(prefix="nginx-"))
    (folder / "nginx.conf").write_text(_config(folder, http_body(folder)))
    process = _start(binary, folder)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                if process.poll() is not None:
                    err = process.stderr.read().decode() if process.stderr else ""
                    raise AssertionError(f"nginx exited: {err}") from None
                assert loop.time() < deadline, "nginx did not start listening"
                await asyncio.sleep(0.05)
        yield Nginx(port, folder, process)
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stderr is not None:
            process.stderr.close()
        shutil.rmtree(folder, ignore_errors=True)
