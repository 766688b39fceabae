"""End-to-end support: the demo stack as a child process, and a real headless Chromium.

``DemoStack`` runs ``python -m gateway demo`` on free ports with its own state
folder, exactly as a person runs ``./dev demo``. ``chromium()`` starts Debian's
Chromium through Selenium and ``/usr/bin/chromedriver`` (never a downloaded
browser or driver) with the flags this machine needs and a fresh profile.
``save_screenshot`` keeps each journey's last page in ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
RECHECK_SECONDS = 2
"""Sessions re-check their mandates this often in the browser tests (the demo uses 15 s)."""
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--window-size=1200,1000",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DemoStack:
    """``gateway demo`` as a child process on free ports, state in ``state_dir``."""

    def __init__(
        self,
        state_dir: Path,
        *,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.portal_port = free_port()
        self.state_dir = state_dir
        self.log_path = Path(tempfile.mkstemp(prefix="gw-demo-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        args = [
            sys.executable,
            "-m",
            "gateway",
            "demo",
            "--port",
            str(self.port),
            "--portal-port",
            str(self.portal_port),
            "--state-dir",
            str(state_dir),
            *(extra_args or []),
        ]
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,  # its own process group, like a terminal's job
        )

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the banner is printed (everything listens) and healthz answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"demo exited early:\n{self.output()}")
            if "Stop with Ctrl-C" in self.output():
                try:
                    health = self.url + "/_gateway/healthz"  # always http://localhost
                    with urllib.request.urlopen(health, timeout=2) as r:  # noqa: S310
                        if r.status == 200:
                            return
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"demo not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """Ctrl-C as a terminal sends it (to the whole process group); returns the exit code."""
        code = 0
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                code = self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        else:
            code = self.proc.returncode
        self._log.close()
        return code

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # replicas too
            self.proc.wait()
        if not self._log.closed:
            self._log.close()
        self.log_path.unlink(missing_ok=True)


def chromium_available() -> str | None:
    """None when Chromium and chromedriver are installed, else what is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    return ", ".join(missing) or None


@contextmanager
def chromium() -> Iterator[WebDriver]:
    """A headless Chromium (Selenium WebDriver) with a fresh, throw-away profile."""
    profile = tempfile.mkdtemp(prefix="gw-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    # A Dutch browser, like the portal's users: the gateway's pages follow Accept-Language.
    options.add_argument("--lang=nl-NL")
    options.add_experimental_option("prefs", {"intl.accept_languages": "nl-NL,nl"})
    # An explicit driver path: Selenium Manager never tries to download one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def save_screenshot(driver: WebDriver, name: str) -> Path:
    """Keep the current page as ``test-artifacts/screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^a-z0-9_-]+', '-', name.lower())}.png"
    driver.save_screenshot(str(path))
    return path
