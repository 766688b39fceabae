"""Starting real gateway processes for tests, the way ops would run them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    """``python -m gateway ARGS`` as a child process, with its output kept for assertions.

    ``module`` names another runnable package (``gateway_dev`` for the
    development commands run the way compose runs them).
    """

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
        *,
        module: str = "gateway",
    ):
        self.log_path = (
            Path(os.environ.get("TMPDIR", "/tmp")) / f"gw-{os.getpid()}-{time.monotonic_ns()}.log"
        )
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            # Its own process group: stop() can then end a supervisor's workers too.
            start_new_session=True,
            # E.g. a lower descriptor limit (resource.setrlimit) for exhaustion tests.
            preexec_fn=preexec_fn,
        )

    async def wait_http(self, url: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"process exited early:\n{self.output()}")
                try:
                    async with session.get(url) as resp:
                        if resp.status < 500:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"{url} not up after {timeout}s:\n{self.output()}")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            raise TimeoutError(f"process did not exit:\n{self.output()}")
        return int(self.proc.returncode)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the whole group: workers too
        self.proc.wait()
        self._log.close()
        self.log_path.unlink(missing_ok=True)
