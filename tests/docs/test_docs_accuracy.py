"""What the docs tell people matches what the code does.

Each check takes the docs' own text (commands, version requirements, setting
tables, example command lines) and holds it against the code it describes:
the CLI parser, pyproject.toml and the lock, the settings models, a running
process.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from gateway.cli import _parser
from gateway_dev.simulator.settings import SimulatorSettings
from tests.support.deploy import parse_dockerfile
from tests.support.processes import GatewayProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# Where commands are named: the docs, the README, config and deploy comments, docstrings.
_TEXT_FILES = [
    *sorted(DOCS.glob("*.md")),
    ROOT / "README.md",
    ROOT / "Dockerfile",
    *sorted((ROOT / "config").glob("*.yaml")),
    *sorted((ROOT / "deploy").rglob("*.yaml")),
    *sorted((ROOT / "gateway").rglob("*.py")),
    *sorted((ROOT / "gateway_dev").rglob("*.py")),
]
# `gateway serve`, ``gateway keys tokens rotate``: the lower-case words after "gateway".
_QUOTED = re.compile(r"`{1,2}gateway((?: [a-z][a-z-]*)+)")
_SHELL_LINE = re.compile(r"^\s*gateway((?: [a-z][a-z-]*)+)", re.MULTILINE)


def _command_mentions() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for path in _TEXT_FILES:
        text = path.read_text(encoding="utf-8")
        blocks = re.findall(r"```(?:sh|bash|console)\n(.*?)```", text, re.DOTALL)
        matches = _QUOTED.findall(text) + [m for b in blocks for m in _SHELL_LINE.findall(b)]
        for words in matches:
            found.append((str(path.relative_to(ROOT)), words.split()))
    return found


def _unknown_word(words: list[str]) -> str | None:
    """The first word that is not a command, subcommand or action of the CLI, if any."""
    parser: argparse.ArgumentParser = _parser()
    for word in words:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subparsers:
            choices = subparsers[0].choices
            if word not in choices:
                return word
            parser = choices[word]
            continue
        positional = [a for a in parser._actions if not a.option_strings and a.choices]
        if positional:
            return None if word in positional[0].choices else word  # type: ignore[operator]
        return None  # a free positional (a file name): the command is complete
    return None


def test_every_gateway_command_named_anywhere_exists() -> None:
    """Each `gateway ...` command in docs, README, config, deploy files and docstrings parses."""
    mentions = _command_mentions()
    assert len(mentions) > 20
    wrong = [
        f"{where}: gateway {' '.join(words)}"
        for where, words in mentions
        if _unknown_word(words) is not None
    ]
    assert wrong == []


def _declared_minimum(package: str) -> Version:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        if req.name == package:
            (clause,) = [s for s in req.specifier if s.operator == ">="]
            return Version(clause.version)
    raise AssertionError(f"{package} is not a runtime dependency")


def test_pyjwt_version_told_to_backends_is_the_declared_minimum() -> None:
    """docs/backends.md's pip line names pyproject's pyjwt minimum, which the lock satisfies.

    2.14 is the first release whose PyJWKClient takes ``cooldown_duration``, which
    the documented verifier (``gateway_dev/portal/verify.py``) passes.
    """
    text = (DOCS / "backends.md").read_text(encoding="utf-8")
    (told,) = re.findall(r'pip install "pyjwt\[crypto\]>=([0-9.]+)"', text)
    declared = _declared_minimum("pyjwt")
    assert Version(told) == declared
    assert declared >= Version("2.14")
    locked = re.search(r"^pyjwt==([0-9.]+)", (ROOT / "requirements/dev.txt").read_text(), re.M)
    assert locked is not None and Version(locked.group(1)) >= declared
    verify = (ROOT / "gateway_dev/portal/verify.py").read_text(encoding="utf-8")
    assert "cooldown_duration=" in verify


def _settings_table(doc: str, heading: str) -> dict[str, str]:
    """First-column names (in backticks) of the table under ``heading``."""
    section = (DOCS / doc).read_text(encoding="utf-8").split(heading, 1)[1].split("\n## ", 1)[0]
    return {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `([a-z_]+)` \|(.*)$", section, re.MULTILINE)
    }


def test_simulator_docs_list_every_setting() -> None:
    """docs/simulator.md's configuration table has a row for every SimulatorSettings field."""
    table = _settings_table("simulator.md", "## Configuration")
    assert sorted(table) == sorted(SimulatorSettings.model_fields)


def test_simulator_docs_agree_with_single_logout_default() -> None:
    """The docs never say the simulator lacks single logout: it publishes one by default."""
    text = (DOCS / "simulator.md").read_text(encoding="utf-8")
    assert SimulatorSettings().single_logout is True
    assert "No SingleLogoutService" not in text
    differs = text.split("## How it differs from a real broker", 1)[1].split("\n## ", 1)[0]
    assert "IdP-initiated" in differs


@pytest.fixture
def processes() -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateway processes; every one is stopped at the end."""
    started: list[GatewayProcess] = []

    def start(args: list[str], **kw: Any) -> GatewayProcess:
        started.append(GatewayProcess(args, **kw))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


def _docker_run(text: str) -> list[str]:
    """The words of the first `docker run` command line in ``text`` (continuations joined)."""
    block = text.split("docker run", 1)[1].split("\n\n", 1)[0]
    line = "docker run" + block.split("```", 1)[0]
    return shlex.split(line.replace("\\\n", " "))


async def test_docker_run_in_deploy_docs_listens_beyond_loopback(
    tmp_path: Path, processes: Callable[..., GatewayProcess]
) -> None:
    """The documented `docker run` (image env + its -e flags + a minimal file) binds 0.0.0.0.

    Published ports reach a container on its own network interface; a gateway
    on the default 127.0.0.1 would never see them.
    """
    for source in ((DOCS / "deploy.md").read_text(), (ROOT / "Dockerfile").read_text()):
        words = _docker_run(source)
        env = {}
        for instruction in parse_dockerfile((ROOT / "Dockerfile").read_text()):
            if instruction.keyword == "ENV":
                for pair in shlex.split(instruction.text.replace("\\\n", " ")):
                    name, _, value = pair.partition("=")
                    env[name] = value
        for flag, value in itertools.pairwise(words):
            if flag in ("-e", "--env"):
                name, _, val = value.partition("=")
                env[name] = val
        published = [v for f, v in itertools.pairwise(words) if f in ("-p", "--publish")]
        assert published == ["8080:8080"]
        port = free_port()
        config = tmp_path / "gateway.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "server": {"port": port},
                    "routes": [
                        {
                            "name": "all",
                            "match": {"path": "/"},
                            "upstream": "http://127.0.0.1:9",
                            "policy": "public",
                        }
                    ],
                }
            )
        )
        env = {k: v for k, v in env.items() if k.startswith("GATEWAY__")}
        gw = processes(["serve", "--config", str(config)], env=env)
        await gw.wait_http(f"http://127.0.0.1:{port}/_gateway/healthz")
        assert '"host":"0.0.0.0"' in gw.output()


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_docs_link_only_to_files_that_exist(doc: str) -> None:
    """Relative links in the docs point at files in the repository."""
    text = (DOCS / doc).read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (DOCS / target).resolve().exists(), f"{doc}: {target}"


def _yaml_block_with(doc: str, marker: str) -> str:
    """The first ```yaml block of ``doc`` that contains ``marker``."""
    text = (DOCS / doc).read_text(encoding="utf-8")
    for block in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL):
        if marker in block:
            return str(block)
    raise AssertionError(f"{doc}: no yaml block with {marker!r}")


async def test_metrics_protection_in_operations_docs_works_as_written(
    tmp_path: Path, processes: Callable[..., GatewayProcess]
) -> None:
    """The documented metrics section and Prometheus scrape config scrape a running gateway.

    The gateway runs the docs' ``metrics:`` section (port and token path swapped
    for free ones here); promtool accepts the documented scrape config; a
    scrape with the token is answered on the metrics port, the main port has
    no metrics, and a scrape without the token is refused.
    """
    section = yaml.safe_load(_yaml_block_with("operations.md", "token_file:"))["metrics"]
    token = tmp_path / "metrics-token"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    port, metrics_port = free_port(), free_port()
    section.update({"port": metrics_port, "host": "127.0.0.1", "token_file": str(token)})
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"port": port},
                "metrics": section,
                "routes": [
                    {
                        "name": "all",
                        "match": {"path": "/"},
                        "upstream": "http://127.0.0.1:9",
                        "policy": "public",
                    }
                ],
            }
        )
    )
    prometheus = _yaml_block_with("operations.md", "scrape_configs:")
    documented = yaml.safe_load(prometheus)["scrape_configs"][0]
    credentials = documented["authorization"]["credentials_file"]
    (tmp_path / "prometheus.yml").write_text(prometheus.replace(credentials, str(token)))
    promtool = shutil.which("promtool")
    assert promtool is not None, "./dev test installs the Debian package prometheus"
    checked = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    gw = processes(["serve", "--config", str(config)])
    await gw.wait_http(f"http://127.0.0.1:{port}/_gateway/healthz")
    path = documented["metrics_path"]
    bearer = {"Authorization": "Bearer " + token.read_text().strip()}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{metrics_port}{path}", headers=bearer) as resp:
            assert resp.status == 200 and "gateway_requests_total" in await resp.text()
        async with http.get(f"http://127.0.0.1:{metrics_port}{path}") as resp:
            assert resp.status == 401
        async with http.get(f"http://127.0.0.1:{port}{path}", headers=bearer) as resp:
            assert resp.status == 404
