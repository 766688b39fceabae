"""The gateway against what users would pick instead, side by side in one interleaved run.

Run: ``./dev bench compare`` (``--quick`` for a short smoke run, ``--chart
docs/performance.png`` for the chart, ``--rows nginx-static,bare`` for some
rows only). Rows (see ``bench/targets/``): nginx serving the page and as a
``proxy_pass`` proxy, Apache ``mod_proxy``, Apache + mod_auth_mellon with real
sessions, the bare aiohttp proxy (asyncio and uvloop), the gateway's public
and authenticated routes (100 and 10,000 sessions on Redis), and the start and
completion of a login for the gateway and for mellon.

How it measures: every server runs as one process (plus its own children)
pinned to one core; the load generators (wrk with one thread and keep-alive
connections, or an aiohttp client for one-time login requests), the upstream
page (nginx), Redis and the broker simulator run on the other core(s). Each
round runs every row once, rows in a rotated order, and the table shows the
median of the rounds for each figure: requests (or logins) per second, p99
latency, and the server's CPU microseconds per request from
``/proc/<pid>/stat``. Every row is probed before it is measured (the right
page, a signed login redirect, a session that works) and authenticated rows
count every answer that is not 200, so a row that silently measured error
pages shows errors instead of speed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bench.harness import Measurement, OneShot, fetch, median, run_oneshots, run_wrk
from bench.targets import BROWSER_HEADERS, PAGE_MARKER, Env, Kind, Row, Target, all_targets

KIND_TITLES: dict[Kind, str] = {
    "page": "pages and proxies (no session)",
    "auth": "authenticated requests",
    "login_start": "start of login (signed AuthnRequest redirect)",
    "login": "login completion (per second: logins; CPU: per login)",
}
PRESETS = {
    "proxy": "nginx-proxy,bare,bare-uvloop,gw-public,gw-auth-100,gw-auth-10k",
}
"""Row sets other benchmark names run (``./dev bench proxy``)."""


@dataclass(frozen=True)
class Lag:
    """Event-loop lag during one run, from a lag histogram read before and after it."""

    worst_ms: float
    """Upper bound of the highest bucket any wake-up fell in (inf: above the last bound)."""
    over_20ms: int
    """Wake-ups late by more than 20 ms."""
    ticks: int
    steal_ms: float = 0.0
    """CPU time the hypervisor took from the server CPU(s) meanwhile (steal time): a
    virtual machine's core that is not running cannot wake the loop up on time."""

    @staticmethod
    def between(before: dict[float, float] | None, after: dict[float, float] | None) -> Lag:
        if not before or not after:
            return Lag(float("nan"), 0, 0)
        delta = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
        total = delta.get(math.inf, max(delta.values()))
        worst = next((le for le, n in delta.items() if n >= total), math.inf)
        over = total - delta.get(0.02, 0.0)
        return Lag(worst * 1000, int(over), int(total))


def steal_seconds(cpus: Iterable[int], stat: str | None = None) -> float:
    """Steal time of ``cpus`` so far (``/proc/stat``, or ``stat``): seconds the hypervisor
    ran something else while these virtual CPUs had work."""
    text = Path("/proc/stat").read_text() if stat is None else stat
    wanted = {f"cpu{c}" for c in cpus}
    ticks = 0
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] in wanted and len(fields) > 8:
            ticks += int(fields[8])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Summary:
    row: Row
    rps: float
    p99_ms: float
    cpu_us: float
    errors: int
    rounds: int


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench compare", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--seconds", type=float, help="per row and round (default 10; quick: 1)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick: 1)")
    p.add_argument("--connections", type=int, default=32, help="keep-alive connections (32)")
    p.add_argument(
        "--warmup", type=float, help="seconds per row before round 1 (default 2; quick: 1)"
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: short rows, one round (rough numbers)"
    )
    p.add_argument("--rows", default="", help="comma-separated row keys (default: all)")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    p.add_argument(
        "--session-cache",
        type=float,
        default=None,
        help="sessions.cache_seconds of the gateway (default: the gateway's default)",
    )
    p.add_argument("--chart", type=Path, help="write a PNG chart of the table (matplotlib)")
    p.add_argument(
        "--keep", action="store_true", help="keep the run's folder (configs, server logs)"
    )
    args = p.parse_args(argv)
    defaults = (1, 1, 1) if args.quick else (10, 3, 2)
    for name, value in zip(("seconds", "rounds", "warmup"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def select(targets: list[Target], wanted: str) -> list[tuple[Row, Target]]:
    """The rows to run, grouped by kind in table order."""
    by_key = {row.key: (row, t) for t in targets for row in t.rows}
    keys = [k.strip() for k in wanted.split(",") if k.strip()] or list(by_key)
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join(by_key)}")
    chosen = [by_key[k] for k in keys]
    order = list(KIND_TITLES)
    keys_order = list(by_key)
    return sorted(chosen, key=lambda rt: (order.index(rt[0].kind), keys_order.index(rt[0].key)))


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Runner:
    """Prepares each row once, then measures it once per round."""

    def __init__(self, env: Env, args: argparse.Namespace) -> None:
        self.env = env
        self.args = args
        self.cookies: dict[str, Path] = {}
        self.pool: dict[str, int] = {}
        self.lags: dict[str, list[Lag]] = {}
        """Per row: the server's event-loop lag in each round (servers that report it)."""

    def prepare(self, row: Row, target: Target) -> None:
        """Probe the row (and make its sessions); fail loudly if it would measure errors."""
        if row.kind == "page":
            status, _, body = fetch(target.page_url(), {"Cookie": "lang=nl"})
            if status != 200 or PAGE_MARKER not in body:
                raise RuntimeError(f"{row.key}: page answered {status}: {body[:200]!r}")
        elif row.kind == "auth":
            say(f"{row.key}: creating {row.sessions:,} sessions")
            cookies = target.sessions(self.env, row.sessions)
            path = self.env.tmp / f"{row.key}.cookies"
            path.write_text("\n".join(cookies) + "\n")
            self.cookies[row.key] = path
        elif row.kind == "login_start":
            status, headers, body = fetch(target.login_start_url())
            location = headers.get("Location", "")
            if status not in (302, 303) or "Signature=" not in location:
                raise RuntimeError(f"{row.key}: no signed redirect: {status} {location[:200]}")

    def measure(
        self, row: Row, target: Target, seconds: float, *, warmup: bool = False
    ) -> Measurement:
        """One run of ``row``; for login rows, also the server's event-loop lag meanwhile.

        ``warmup``: a run whose numbers are not kept (``row.min_seconds`` does not apply).
        """
        before = target.loop_lag() if row.kind in ("login", "login_start") else None
        if before is None:
            return self._measure(row, target, seconds, warmup=warmup)
        stolen = steal_seconds(self.env.server_cpus)
        result = self._measure(row, target, seconds, warmup=warmup)
        lag = Lag.between(before, target.loop_lag())
        steal_ms = (steal_seconds(self.env.server_cpus) - stolen) * 1000
        self.lags.setdefault(row.key, []).append(replace(lag, steal_ms=steal_ms))
        return result

    def _measure(
        self, row: Row, target: Target, seconds: float, *, warmup: bool = False
    ) -> Measurement:
        c = self.args.connections
        headers = BROWSER_HEADERS
        pids = target.pids()
        if row.kind == "page":
            return run_wrk(
                target.page_url(),
                seconds=seconds,
                connections=c,
                headers=[*headers, "Cookie: lang=nl"],
                pids=pids,
            )
        if row.kind == "auth":
            self.visit_every_session(row, target)
            if not (self.args.quick or warmup):
                seconds = max(seconds, row.min_seconds)
            return run_wrk(
                target.auth_url(),
                seconds=seconds,
                connections=c,
                headers=headers,
                cookies_file=self.cookies[row.key],
                script_dir=self.env.tmp,
                pids=pids,
            )
        if row.kind == "login_start":
            return run_wrk(
                target.login_start_url(), seconds=seconds, connections=c, headers=headers, pids=pids
            )
        # Logins: prepared one-time requests, as many as this row can use in `seconds`.
        count = self.pool.get(row.key, max(4, min(c, 20)))
        shots = target.logins(self.env, count)
        result = run_oneshots(shots, seconds=seconds, concurrency=c, pids=pids)
        if result.requests and row.key not in self.pool:
            full = self.args.seconds * result.rps * 1.3 + c
            self.pool[row.key] = max(8, min(4000, math.ceil(full)))
        return result

    def visit_every_session(self, row: Row, target: Target) -> None:
        """One request per session before measuring: the steady state of active sessions.

        In steady traffic an active session came back within seconds, so it is in
        the server's session cache (the gateway's per-replica cache, nginx's auth
        cache, mellon's session cache) as far as that cache's lifetime allows. A
        cold start (the server meets all N sessions for the first time inside the
        window) is a different workload, measured by its own row.
        """
        cookies = [c for c in self.cookies[row.key].read_text().splitlines() if c]
        url = target.auth_url()
        headers = dict(h.split(": ", 1) for h in BROWSER_HEADERS)
        shots = [OneShot("GET", url, {**headers, "Cookie": c}) for c in cookies]
        result = run_oneshots(shots, seconds=600, concurrency=self.args.connections)
        if result.errors or result.requests != len(cookies):
            raise RuntimeError(
                f"{row.key}: visiting every session: {result.requests} of {len(cookies)} "
                f"answered 200, {result.errors} errors"
            )

    def check_after(self, row: Row, target: Target) -> None:
        """A session must still work after its row ran (else the numbers measured redirects)."""
        if row.kind == "auth":
            first = self.cookies[row.key].read_text().split("\n", 1)[0]
            status, _, body = fetch(target.auth_url(), {"Cookie": first})
            if status != 200 or PAGE_MARKER not in body:
                raise RuntimeError(f"{row.key}: a session stopped working: {status}")


def run(args: argparse.Namespace) -> tuple[list[Summary], dict[str, str], dict[str, list[Lag]]]:
    chosen = select(all_targets(), args.rows)
    env = Env(quick=args.quick, session_cache=args.session_cache, keep=args.keep)
    # This process, wrk, the upstream, Redis and the simulator share the load side.
    os.sched_setaffinity(0, env.load_cpus)
    info = machine_info(env)
    steal_at_start, started_at = steal_seconds(env.server_cpus), time.monotonic()
    results: dict[str, list[Measurement]] = {row.key: [] for row, _ in chosen}
    try:
        started: set[str] = set()
        for _, target in chosen:
            if target.name not in started:
                say(f"starting {target.name}")
                target.start(env)
                started.add(target.name)
        runner = Runner(env, args)
        lags = runner.lags
        for row, target in chosen:
            runner.prepare(row, target)
        if args.warmup > 0:
            say("warm-up (connection pools, caches; logins: sizing their batches)")
            for row, target in chosen:
                runner.measure(row, target, args.warmup, warmup=True)
        for r in range(args.rounds):
            shift = (r * len(chosen)) // max(1, args.rounds)
            order = chosen[shift:] + chosen[:shift]
            for row, target in order:
                say(f"round {r + 1}/{args.rounds}: {row.key}")
                m = runner.measure(row, target, args.seconds)
                runner.check_after(row, target)
                results[row.key].append(m)
                time.sleep(0.3)  # let closing connections settle before the next row
    finally:
        info["load_after"] = loadavg()
        stolen = steal_seconds(env.server_cpus) - steal_at_start
        info["steal"] = f"{stolen:.1f} s of {time.monotonic() - started_at:.0f} s"
        env.close()
        if args.keep:
            say(f"kept {env.tmp}")
    summaries = [
        Summary(
            row=row,
            rps=median(m.rps for m in results[row.key]),
            p99_ms=median(m.p99_ms for m in results[row.key]),
            cpu_us=median(m.cpu_us for m in results[row.key]),
            errors=sum(m.errors for m in results[row.key]),
            rounds=len(results[row.key]),
        )
        for row, _ in chosen
    ]
    return summaries, info, {k: v for k, v in lags.items() if k in results}


# -- report ------------------------------------------------------------------


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _version(cmd: list[str], pattern: str = "") -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    lines = [line for line in text if pattern in line] or text
    return lines[0].strip() if lines else "?"


def machine_info(env: Env) -> dict[str, str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    pkg = ["dpkg-query", "-W", "-f=${Version}"]
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "pinning": f"servers on CPU {sorted(env.server_cpus)}, load on {sorted(env.load_cpus)}",
        "load_before": loadavg(),
        "python": platform.python_version(),
        "nginx": _version([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]),
        "apache": _version([shutil.which("apache2") or "/usr/sbin/apache2", "-v"], "version"),
        "mellon": "mod_auth_mellon " + _version([*pkg, "libapache2-mod-auth-mellon"]),
        "wrk": _version(["wrk", "-v"]),
    }


def _num(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}"


def table(summaries: list[Summary]) -> str:
    lines = ["| row | req/s | p99 ms | CPU µs/req | errors |", "|---|--:|--:|--:|--:|"]
    kind: str | None = None
    for s in summaries:
        if s.row.kind != kind:
            kind = s.row.kind
            lines.append(f"| *{KIND_TITLES[s.row.kind]}* | | | | |")
        rps_digits = 1 if s.rps < 100 else 0
        lines.append(
            f"| {s.row.label} | {_num(s.rps, rps_digits)} | {_num(s.p99_ms, 1)} "
            f"| {_num(s.cpu_us)} | {s.errors} |"
        )
    return "\n".join(lines)


def ratios(summaries: list[Summary]) -> str:
    by_key = {s.row.key: s for s in summaries}
    lines = ["| row | compared with | req/s ratio | CPU per request ratio |", "|---|---|--:|--:|"]
    for s in summaries:
        for other_key in s.row.compare_with:
            o = by_key.get(other_key)
            if o is None:
                continue
            rps = s.rps / o.rps if o.rps else float("nan")
            cpu = s.cpu_us / o.cpu_us if o.cpu_us else float("nan")
            lines.append(f"| {s.row.label} | {o.row.label} | {rps:.2f}x | {cpu:.2f}x |")
    return "\n".join(lines) if len(lines) > 2 else ""


def lag_lines(summaries: list[Summary], lags: dict[str, list[Lag]]) -> str:
    """The event-loop lag of the rows whose server reports it (the gateway's logins)."""
    lines = []
    for s in summaries:
        runs = [lag for lag in lags.get(s.row.key, []) if lag.ticks]
        if not runs:
            continue
        worst = max(lag.worst_ms for lag in runs)
        over = sum(lag.over_20ms for lag in runs)
        bound = "above 5 s" if math.isinf(worst) else f"at most {worst:g} ms"
        steal = sum(lag.steal_ms for lag in runs)
        lines.append(
            f"- {s.row.label}: worst wake-up {bound} late; wake-ups more than 20 ms late: "
            f"{over} of {sum(lag.ticks for lag in runs):,}; steal time on the server CPU "
            f"meanwhile: {steal:,.0f} ms"
        )
    if not lines:
        return ""
    return (
        "Event-loop lag during the runs (the gateway's 10 ms timer, "
        "gateway_event_loop_lag_seconds, read before and after each run; steal time: what "
        "the hypervisor took from the server's virtual CPU):\n\n" + "\n".join(lines)
    )


def report(
    summaries: list[Summary],
    info: dict[str, str],
    args: argparse.Namespace,
    lags: dict[str, list[Lag]] | None = None,
) -> str:
    head = [
        f"bench compare, {info['date']}: {info['cpu']}; {info['pinning']}",
        f"load average before {info['load_before']}, after {info.get('load_after', '?')}; "
        f"steal time on the server CPU during the run: {info.get('steal', '?')}",
        f"wrk -t1 -c{args.connections}, keep-alive, {args.seconds:g} s per row, "
        f"median of {args.rounds} interleaved round(s); logins: {args.connections} concurrent",
        f"{info['nginx']}; {info['apache']}; {info['mellon']}; Python {info['python']}",
        "",
    ]
    out = "\n".join(head) + table(summaries)
    rt = ratios(summaries)
    if rt:
        out += (
            "\n\nRatios (this row / the other row, same run; req/s: above 1 is faster, "
            "CPU per request: below 1 is cheaper)\n\n" + rt
        )
    lag = lag_lines(summaries, lags or {})
    if lag:
        out += "\n\n" + lag
    return out + "\n"


def chart(summaries: list[Summary], info: dict[str, str], path: Path) -> None:
    """Requests/s and CPU per request per row, two log-scale bar panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = {row.key for t in all_targets() if t.ours for row in t.rows}
    # Long labels (the whole-box rows) on two lines, so the panels keep their width.
    labels = [textwrap.fill(s.row.label, 52) for s in summaries][::-1]
    rps = [s.rps for s in summaries][::-1]
    cpu = [s.cpu_us for s in summaries][::-1]
    colours = ["#1f6fb4" if s.row.key in ours else "#9a9a9a" for s in summaries][::-1]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(13, 0.42 * len(labels) + 1.6), sharey=True, constrained_layout=True
    )
    for ax, values, title, fmt in (
        (left, rps, "requests (logins) per second\nlog scale: longer is faster", "{:,.0f}"),
        (right, cpu, "server CPU µs per request (login)\nlog scale: shorter is cheaper", "{:,.0f}"),
    ):
        clean = [v if v == v else 0 for v in values]
        ax.barh(labels, clean, color=colours)
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", which="both", alpha=0.25)
        for y, v in enumerate(clean):
            if v > 0:
                ax.text(v, y, " " + fmt.format(v), va="center", fontsize=8)
        ax.set_xlim(right=max(clean) * 8 if any(clean) else 10)
    # A line between the kinds of work (pages, authenticated, login start, login).
    kinds = [s.row.kind for s in summaries][::-1]
    for y in range(1, len(kinds)):
        if kinds[y] != kinds[y - 1]:
            for ax in (left, right):
                ax.axhline(y - 0.5, color="#444444", linewidth=0.8)
    left.tick_params(axis="y", labelsize=9)
    fig.suptitle(
        f"Gateway (blue) and the alternatives (grey), one run on {info['date']}: {info['cpu']}",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for row, _ in select(all_targets(), ""):
            print(f"{row.key:<20} {row.label}")
        return 0
    if not shutil.which("wrk"):
        print("wrk is not installed (./dev bench installs it)", file=sys.stderr)
        return 2
    # The servers run in their own sessions (so a terminal's Ctrl-C reaches only
    # this process): a TERM must still unwind into the cleanup that stops them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    summaries, info, lags = run(args)
    print(report(summaries, info, args, lags))
    if args.chart:
        chart(summaries, info, args.chart)
        say(f"chart written to {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
