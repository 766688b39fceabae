"""Every test is exactly one of unit, integration or browser; the default run runs them all."""

from __future__ import annotations

import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.markers import forbid_peers

REPO = Path(__file__).resolve().parents[2]


def test_every_collected_test_has_exactly_one_kind() -> None:
    """No test is left without a kind or given two (a real collection of the whole suite)."""
    wrong = (
        "-m",
        "(unit and integration) or (unit and browser) or (integration and browser)"
        " or not (unit or integration or browser)",
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *wrong],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    # pytest's exit code 5: nothing selected, i.e. no test matches the wrong expression.
    assert done.returncode == 5, done.stdout[-3000:] + done.stderr[-3000:]
    assert "deselected" in done.stdout


def test_the_default_run_selects_every_kind() -> None:
    """pytest's configured options select no marker, so ./dev test runs all three kinds."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "-m" not in config["addopts"].split()
    declared = {line.split(":", 1)[0] for line in config["markers"]}
    assert {"unit", "integration", "browser"} <= declared
    assert "--strict-markers" in config["addopts"].split()


def test_a_unit_test_cannot_start_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the unit guard, starting a process fails with a message naming the rule."""
    with (
        forbid_peers(monkeypatch),
        pytest.raises(AssertionError, match=r"marked unit started a process.*markers\.py"),
    ):
        subprocess.run(["true"], check=False)


def test_a_unit_test_cannot_listen_on_a_tcp_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the unit guard, listening on loopback fails; a Unix socket pair still works."""
    with forbid_peers(monkeypatch), socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        with pytest.raises(AssertionError, match="listened on a TCP socket"):
            server.listen()
        left, right = socket.socketpair()
        left.close()
        right.close()
