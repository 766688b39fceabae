"""The measuring machinery every comparison row shares: processes, CPU, load generators.

A row's numbers come from one of two load generators, both run from this
(load) side of the machine while the server under test sits on its own core:

* :func:`run_wrk`: ``wrk`` (Debian's package), keep-alive connections, a
  fixed duration; an optional Lua script rotates session cookies across many
  sessions and counts answers that are not ``200`` (an expired session turns
  into a login redirect, which wrk alone would count as a success).
* :func:`run_oneshots`: prepared requests that may each be sent only once
  (a SAML artifact or a signed Response: replaying one is refused), sent by
  an aiohttp client with bounded concurrency until they run out or the
  duration ends.

CPU per request is the server's own cost: user + system time of its
processes (and their children, such as a verification pool) from
``/proc/<pid>/stat``, before and after the run, divided by the requests the
load generator completed. Unlike requests/s it barely moves when other
programs share the machine, which makes it the steadier figure on a busy host.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Measurement:
    """One row's result in one round."""

    rps: float
    """Completed requests (or logins) per second."""
    p99_ms: float
    requests: int
    cpu_us: float
    """Server CPU microseconds per completed request (NaN without processes to measure)."""
    errors: int
    """Socket errors, timeouts and answers other than the expected ones."""


@dataclass(frozen=True)
class OneShot:
    """A request that may be sent once: method, URL, headers, body, and the answers that count."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | dict[str, str] | None = None
    expect: frozenset[int] = frozenset({200})


# -- processes ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a verification pool, Apache's children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def cpu_ticks(pids: Iterable[int]) -> dict[int, int]:
    """User + system clock ticks each live process (and its descendants) has used so far."""
    out: dict[int, int] = {}
    for root in pids:
        for pid in descendants(root):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone between listing and reading
            # utime, stime, then cutime, cstime: children that already exited count too
            out[pid] = sum(int(f) for f in fields[11:15])
    return out


def cpu_seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds used between two :func:`cpu_ticks` readings (new processes from zero)."""
    return sum(ticks - before.get(pid, 0) for pid, ticks in after.items()) / CLK_TCK


def server_cpus() -> tuple[set[int], set[int]]:
    """(the server's core, the load side's cores): servers get one core, the rest drives load.

    On a single-core machine both share it and nothing is pinned.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    return {cpus[0]}, set(cpus[1:])


def pinned(cmd: Sequence[str], cpus: set[int]) -> list[str]:
    """``cmd`` run under ``taskset`` on ``cpus`` (unchanged when taskset is missing)."""
    taskset = shutil.which("taskset")
    if taskset is None:
        return list(cmd)
    return [taskset, "-c", ",".join(str(c) for c in sorted(cpus)), *cmd]


@dataclass
class Processes:
    """Child processes a benchmark started; all of them stop when it ends."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(
        self, cmd: Sequence[str], *, log: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = log.open("ab") if log is not None else subprocess.DEVNULL
        proc = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own group: stop() reaches its children too
        )
        if log is not None:
            out.close()  # type: ignore[union-attr]
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


def wait_http(
    url: str,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    timeout: float = 30,
) -> None:
    """Wait until ``url`` answers at all (any HTTP status); fail if the process died first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}\n{text}")
        try:
            fetch(url, timeout=2)
            return  # it answered, whatever the status
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:g} s")


# -- wrk ---------------------------------------------------------------------

# Rotates the Cookie header over the sessions in the file named after ``--``
# (each request built once, at start: the load side stays cheap) and counts
# answers other than 200 (wrk alone counts a 3xx as a success,
# which an expired session's redirect to the login would be).
ROTATE_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  reqs = {}
  for line in io.lines(args[1]) do
    wrk.headers["Cookie"] = line
    reqs[#reqs + 1] = wrk.format()
  end
  i = math.random(#reqs) - 1
  not200 = 0
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
function response(status, headers, body)
  if status ~= 200 then not200 = not200 + 1 end
end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("not200") end
  io.write(string.format("BENCH_NOT_200 %d\\n", n))
end
"""


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def parse_wrk(out: str) -> tuple[float, float, int, int]:
    """(requests/s, p99 ms, requests, errors) from ``wrk --latency`` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not (rps and p99 and total):
        raise RuntimeError(f"unreadable wrk output:\n{out}")
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    if m := re.search(r"BENCH_NOT_200 (\d+)", out):
        errors = max(errors, int(m.group(1)))
    return float(rps.group(1)), _ms(p99.group(1)), int(total.group(1)), errors


def run_wrk(
    url: str,
    *,
    seconds: float,
    connections: int,
    headers: Sequence[str] = (),
    cookies_file: Path | None = None,
    script_dir: Path | None = None,
    pids: Sequence[int] = (),
) -> Measurement:
    """One wrk run (one thread, keep-alive); CPU of ``pids`` over the same window."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    # Slow rows (a signed AuthnRequest per request on one core) must not turn
    # into timeouts: a late answer is still an answer, and p99 shows it.
    cmd += ["--timeout", "30s"]
    for h in headers:
        cmd += ["-H", h]
    if cookies_file is not None:
        assert script_dir is not None
        script = script_dir / "rotate.lua"
        if not script.exists():
            script.write_text(ROTATE_LUA)
        cmd += ["-s", str(script), url, "--", str(cookies_file)]
    else:
        cmd.append(url)
    before = cpu_ticks(pids)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=seconds + 90)
    after = cpu_ticks(pids)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    rps, p99, total, errors = parse_wrk(done.stdout)
    if total == 0:
        p99 = float("nan")  # nothing finished within the run (a very slow row, a short run)
    cpu = cpu_seconds_between(before, after) if pids else float("nan")
    return Measurement(rps, p99, total, cpu / total * 1e6 if total else float("nan"), errors)


# -- requests that may be sent once ------------------------------------------


def run_oneshots(
    shots: Sequence[OneShot],
    *,
    seconds: float,
    concurrency: int,
    pids: Sequence[int] = (),
) -> Measurement:
    """Send prepared one-time requests, ``concurrency`` at a time, until done or time is up."""
    return asyncio.run(_oneshots(shots, seconds, concurrency, pids))


async def _oneshots(
    shots: Sequence[OneShot], seconds: float, concurrency: int, pids: Sequence[int]
) -> Measurement:
    latencies: list[float] = []
    errors = 0
    queue = iter(shots)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout
    ) as client:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds

        async def worker() -> None:
            nonlocal errors
            for shot in queue:
                if loop.time() >= deadline:
                    return
                started = loop.time()
                try:
                    kwargs: dict[str, object] = {"headers": shot.headers, "allow_redirects": False}
                    if shot.body is not None:
                        kwargs["data"] = shot.body
                    async with client.request(shot.method, shot.url, **kwargs) as resp:  # type: ignore[arg-type]
                        await resp.read()
                        ok = resp.status in shot.expect
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                latencies.append(loop.time() - started)
                errors += not ok

        before = cpu_ticks(pids)
        t0 = loop.time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = loop.time() - t0
        after = cpu_ticks(pids)
    done = len(latencies) - errors
    cpu = cpu_seconds_between(before, after) if pids else float("nan")
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000 if len(latencies) > 1 else float("nan")
    return Measurement(
        rps=done / elapsed if elapsed else float("nan"),
        p99_ms=p99,
        requests=done,
        cpu_us=cpu / done * 1e6 if done else float("nan"),
        errors=errors,
    )


def fetch(
    url: str, headers: dict[str, str] | None = None, *, follow: bool = False, timeout: float = 30
) -> tuple[int, dict[str, str], bytes]:
    """One blocking request (setup and probes only): status, headers, body."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    handlers = [] if follow else [NoRedirect()]
    opener = urllib.request.build_opener(*handlers)
    req = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback only
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def median(values: Iterable[float]) -> float:
    clean = [v for v in values if v == v]  # drop NaN
    return statistics.median(clean) if clean else float("nan")


def repeat_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready within {timeout:g} s")
        time.sleep(0.1)
