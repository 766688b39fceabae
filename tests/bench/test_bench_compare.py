"""The comparison benchmark's machinery against real servers: numbers come out, never speed.

These tests assert that the harness measures and reports (a row of numbers
per server, the chart, cookie rotation, error counting), not how fast
anything is: timings belong in the benchmark's output, not in assertions.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from bench.harness import run_wrk

ROOT = Path(__file__).resolve().parents[2]


def _table_rows(output: str) -> dict[str, list[str]]:
    """The cells of each numbered row of the printed Markdown table, by row label."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and not cells[0].startswith(("*", "row", "---")):
            rows[cells[0]] = cells[1:]
    return rows


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_quick_compare_measures_two_rows_and_draws_the_chart(tmp_path: Path) -> None:
    """`bench compare --quick` on two servers prints req/s, p99, CPU per request; draws a chart."""
    chart = tmp_path / "chart.png"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench",
            "compare",
            "--quick",
            "--warmup",
            "0",
            "--rows",
            "nginx-static,bare",
            "--chart",
            str(chart),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.terminate()  # TERM: the benchmark stops its servers before it exits
        stdout, stderr = proc.communicate(timeout=30)
        pytest.fail(f"bench compare --quick did not finish in 120 s:\n{stderr[-3000:]}")
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _table_rows(done.stdout)
    assert set(rows) == {"nginx, static file", "bare aiohttp proxy"}, done.stdout
    for label, (rps, p99, cpu, errors) in rows.items():
        assert _number(rps) > 0, label
        assert _number(p99) > 0, label
        assert _number(cpu) > 0, label  # the server process's own CPU was read
        assert errors == "0", label
    assert "| row | req/s | p99 ms | CPU µs/req | errors |" in done.stdout
    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.fixture
def cookie_server() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on loopback that records each Cookie header; 303 for session ``s3``."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        cookie = request.headers.get("Cookie", "")
        seen.append(cookie)
        if cookie == "session=s3":
            return web.Response(status=303, headers={"Location": "/login"})
        return web.Response(text="ok")

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/", handle)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/", seen
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_wrk_rotates_session_cookies_and_counts_answers_other_than_200(
    tmp_path: Path, cookie_server: tuple[str, list[str]]
) -> None:
    """wrk's rotation script sends every session cookie and counts a login redirect as an error."""
    url, seen = cookie_server
    cookies = tmp_path / "cookies"
    cookies.write_text("".join(f"session=s{i}\n" for i in range(5)))
    result = run_wrk(url, seconds=1, connections=2, cookies_file=cookies, script_dir=tmp_path)
    assert {f"session=s{i}" for i in range(5)} <= set(seen)
    assert result.requests > 0
    redirects = seen.count("session=s3")
    assert redirects > 0
    # wrk itself would count a 303 as a success; the script counts it (the ones
    # that finished within the run, so at most as many as the server answered).
    assert 0 < result.errors <= redirects


def test_the_commands_in_the_performance_doc_name_real_rows_and_options() -> None:
    """Every `./dev bench` line in docs/performance.md parses, and its row keys exist."""
    from bench.compare import PRESETS, parse_args, select
    from bench.targets import all_targets

    doc = (ROOT / "docs" / "performance.md").read_text()
    block = doc.split("## Commands", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].split() for line in block.strip().splitlines()]
    assert commands, "no commands in the doc"
    targets = all_targets()
    for words in commands:
        assert words[:2] == ["./dev", "bench"], words
        if words[2] == "compare":
            args = parse_args(words[3:])
            assert select(targets, args.rows), words
        else:
            assert words[2] in PRESETS, words
            assert select(targets, PRESETS[words[2]]), words


def test_loop_lag_between_two_histogram_readings() -> None:
    """The worst bucket and the wake-ups above 20 ms come from the difference of two readings."""
    import math

    from bench.compare import Lag

    before = {0.001: 90.0, 0.005: 95.0, 0.01: 99.0, 0.02: 100.0, 0.05: 100.0, math.inf: 100.0}
    after = {0.001: 180.0, 0.005: 195.0, 0.01: 199.0, 0.02: 200.0, 0.05: 202.0, math.inf: 202.0}
    lag = Lag.between(before, after)
    assert lag == Lag(worst_ms=50.0, over_20ms=2, ticks=102)
    quiet = Lag.between(
        before,
        {
            **before,
            0.001: 100.0,
            0.005: 105.0,
            0.01: 109.0,
            0.02: 110.0,
            0.05: 110.0,
            math.inf: 110.0,
        },
    )
    assert quiet == Lag(worst_ms=1.0, over_20ms=0, ticks=10)


def test_steal_time_is_read_per_cpu_from_proc_stat() -> None:
    """The eighth number of a cpuN line of /proc/stat, in seconds, for the CPUs asked."""
    import os

    from bench.compare import steal_seconds

    stat = (
        "cpu  291893 5734 82810 367428 1372 0 34647 4174 0 0\n"
        "cpu0 169429 5204 32198 169134 730 0 17443 1488 0 0\n"
        "cpu1 122463 529 50612 198293 642 0 17204 2685 0 0\n"
        "intr 1 2 3\n"
    )
    tick = os.sysconf("SC_CLK_TCK")
    assert steal_seconds([0], stat) == 1488 / tick
    assert steal_seconds([0, 1], stat) == (1488 + 2685) / tick
    assert steal_seconds([7], stat) == 0
    assert steal_seconds([0]) >= 0  # this machine's own /proc/stat


def test_the_10k_session_rows_measure_a_whole_touch_cycle() -> None:
    """Each 10,000-session row's window is longer than the session touch interval and
    cache time (and forward-auth's cache time): every session's store write falls in
    it once, so the row measures the steady rate, whatever the defaults become."""
    from bench.targets import all_targets
    from gateway.config import ForwardAuthSettings
    from gateway.sessions.settings import SessionSettings

    defaults = SessionSettings()
    cycle = max(defaults.touch_interval.total_seconds(), defaults.cache_seconds)
    rows = [row for target in all_targets() for row in target.rows if row.sessions >= 10_000]
    assert {row.key for row in rows} >= {"gw-auth-10k", "fa-auth-10k"}
    for row in rows:
        assert row.min_seconds > cycle, row.key
        if row.key.startswith(("fa-", "box-fa-")):
            auth_cache = ForwardAuthSettings().cache_seconds
            assert row.min_seconds > auth_cache, row.key
