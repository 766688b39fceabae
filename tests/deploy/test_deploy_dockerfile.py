"""The Dockerfile and .dockerignore, read statically and checked against the code."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from pathlib import PurePosixPath
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from gateway.app import build_app
from gateway.config import ServerSettings, parse_config
from tests.support.deploy import (
    REPO,
    DockerIgnore,
    Instruction,
    command_problem,
    expand,
    global_args,
    only,
    stages,
)


def _final(dockerfile: list[Instruction]) -> list[Instruction]:
    return stages(dockerfile)[-1]


def _one(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def _env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for word in re.findall(r"(\w+)=(\S+)", ins.text):
                env[word[0]] = word[1]
    return env


def _healthcheck_script(dockerfile: list[Instruction]) -> str:
    cmd = _one(_final(dockerfile), "HEALTHCHECK")
    assert cmd.body().startswith("CMD ")
    argv = Instruction("CMD", cmd.body()[4:], cmd.line).exec_form()
    assert argv is not None, "HEALTHCHECK must use the exec form"
    assert argv[:2] == ["python", "-c"], "slim images have no curl: use the standard library"
    return argv[2]


def test_multi_stage_on_one_pinned_slim_base(dockerfile: list[Instruction]) -> None:
    """There is a builder stage and a runtime stage, both on the same pinned slim Python tag."""
    groups = stages(dockerfile)
    assert len(groups) >= 2
    args = global_args(dockerfile)
    bases = [expand(g[0].text.split()[0], args) for g in groups]
    assert len(set(bases)) == 1, "the venv is copied between stages: one interpreter"
    assert re.fullmatch(
        r"python:3\.1[1-9](\.\d+)?-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?", bases[0]
    )


def test_runtime_stage_runs_as_the_fixed_non_root_user(dockerfile: list[Instruction]) -> None:
    """The final stage switches to UID/GID 10001 before ENTRYPOINT and never back to root."""
    final = _final(dockerfile)
    users = [(n, i) for n, i in enumerate(final) if i.keyword == "USER"]
    entry = next(n for n, i in enumerate(final) if i.keyword == "ENTRYPOINT")
    assert users, "no USER in the runtime stage"
    assert all(n < entry for n, _ in users)
    assert users[-1][1].text == "10001:10001"


def test_entrypoint_is_gateway_serve_with_config_from_environment(
    dockerfile: list[Instruction],
) -> None:
    """ENTRYPOINT/CMD run `gateway serve`, a real subcommand, with GATEWAY_CONFIG set."""
    final = _final(dockerfile)
    assert _one(final, "ENTRYPOINT").exec_form() == ["gateway"]
    cmd = _one(final, "CMD").exec_form()
    assert cmd == ["serve"]
    assert command_problem(cmd) is None
    env = _env(final)
    assert env["GATEWAY_CONFIG"] == "/etc/gateway/gateway.yaml"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")


def test_writable_tmp_is_declared_for_a_read_only_root(dockerfile: list[Instruction]) -> None:
    """TMPDIR (prometheus multiprocess files) is /tmp and /tmp is a declared VOLUME."""
    final = _final(dockerfile)
    assert _env(final)["TMPDIR"] == "/tmp"
    assert _one(final, "VOLUME").exec_form() == ["/tmp"]


def test_exposed_port_and_healthcheck_match_the_gateway(dockerfile: list[Instruction]) -> None:
    """EXPOSE is the default server port and HEALTHCHECK asks that port's liveness route."""
    final = _final(dockerfile)
    port = int(_one(final, "EXPOSE").text)
    assert port == ServerSettings().port
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*?)'", _healthcheck_script(dockerfile))
    assert url is not None
    assert int(url.group(1)) == port
    assert url.group(2) == ServerSettings().reserved_prefix + "healthz"


async def test_healthcheck_command_passes_on_a_live_gateway_and_fails_without() -> None:
    """The HEALTHCHECK script exits 0 against a running gateway and non-zero when none listens."""
    from tests.support.deploy import parse_dockerfile

    script = _healthcheck_script(parse_dockerfile((REPO / "Dockerfile").read_text()))
    config = parse_config(
        "routes: [{name: p, match: {path: /}, upstream: 'http://127.0.0.1:9', policy: public}]",
        file="t",
        environ={},
    )

    async def run(port: int) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script.replace(":8080/", f":{port}/"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await asyncio.wait_for(proc.wait(), timeout=30)

    server = TestServer(build_app(config, configure_logs=False), host="127.0.0.1")
    await server.start_server()
    try:
        assert server.port is not None
        live = await run(server.port)
    finally:
        await server.close()
    with socket.socket() as s:  # bound but not listening: connection refused
        s.bind(("127.0.0.1", 0))
        down = await run(s.getsockname()[1])
    assert live == 0
    assert down != 0


def test_no_remote_add_and_no_secrets_copied(dockerfile: list[Instruction]) -> None:
    """Nothing is fetched with ADD, and no COPY names a key, certificate or the whole context."""
    assert not [i for i in dockerfile if i.keyword == "ADD"], "use COPY (ADD fetches URLs)"
    for ins in dockerfile:
        if ins.keyword != "COPY":
            continue
        sources = ins.body().split()[:-1]
        for src in sources:
            assert src not in {".", "./", "*"}, f"line {ins.line}: copies the whole context"
            assert not re.search(r"\.(pem|key|crt|p12|pfx)$|secret|\.env$", src), src
    final_copies = [i for i in _final(dockerfile) if i.keyword == "COPY"]
    assert final_copies and all("from" in i.flags() for i in final_copies)


def test_native_dependencies_installed_lean(dockerfile: list[Instruction]) -> None:
    """The runtime installs ca-certificates (no xmlsec1: nothing forks it) and drops apt lists."""
    runs = " ".join(i.text for i in _final(dockerfile) if i.keyword == "RUN")
    assert re.search(r"apt-get install -y --no-install-recommends [^&]*\bca-certificates\b", runs)
    assert "xmlsec1" not in runs
    assert "ca-certificates" in runs
    assert "rm -rf /var/lib/apt/lists/*" in runs
    builder = " ".join(i.text for i in stages(dockerfile)[0] if i.keyword == "RUN")
    assert "--only-binary=:all:" in builder, "no compiling dependencies from source"


def test_labels_name_the_image(dockerfile: list[Instruction]) -> None:
    """OCI labels give title, version and licence."""
    labels = " ".join(i.text for i in _final(dockerfile) if i.keyword == "LABEL")
    for key in ("title", "version", "licenses", "description"):
        assert f"org.opencontainers.image.{key}=" in labels


def _tracked(prefix: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", prefix], capture_output=True, text=True, cwd=REPO, check=True
    )
    return [line for line in out.stdout.splitlines() if line]


def test_build_context_holds_what_the_build_copies(dockerfile: list[Instruction]) -> None:
    """Every tracked file the builder COPYs survives .dockerignore; caches do not."""
    ignore = DockerIgnore.parse((REPO / ".dockerignore").read_text())
    for ins in dockerfile:
        if ins.keyword != "COPY" or "from" in ins.flags():
            continue
        for src in ins.body().split()[:-1]:
            assert (REPO / src).exists(), src
            files = _tracked(src)
            assert files, src
            kept = [f for f in files if not ignore.ignored(f)]
            assert kept == [f for f in files if "__pycache__" not in f], src
    assert ignore.ignored("gateway/__pycache__/app.cpython-311.pyc")


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/config",
        "var/keys/signing.key",
        "var/simulator/tls.crt",
        "gateway/dev-signing.pem",
        "gateway_dev/simulator/app.py",
        "gateway_dev/devkeys.py",
        "tests/deploy/test_deploy_dockerfile.py",
        "test-artifacts/report.xml",
        "deploy/compose/gateway.yaml",
        ".env",
        "some/dir/.env",
    ],
)
def test_dockerignore_keeps_local_state_and_keys_out(path: str) -> None:
    """Virtualenvs, git data, local state, tests, key material and the development package
    (simulator, sample portal, dev keys) never enter the context."""
    ignore = DockerIgnore.parse((REPO / ".dockerignore").read_text())
    assert ignore.ignored(path)


def test_runtime_user_matches_the_pod_security_context(
    dockerfile: list[Instruction], production_objects: list[dict[str, Any]]
) -> None:
    """The Deployment runs as the image's UID/GID, and mounts writable /tmp for TMPDIR."""
    user, _, group = _one(_final(dockerfile), "USER").text.partition(":")
    pod = only(production_objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(user)
    assert pod["securityContext"]["runAsGroup"] == int(group)
    assert pod["securityContext"]["fsGroup"] == int(group)
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    tmp = _env(_final(dockerfile))["TMPDIR"]
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[tmp])
    assert "emptyDir" in volume
    assert PurePosixPath(tmp).is_absolute()
