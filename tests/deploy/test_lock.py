"""The lock files: what a fresh machine and the image install is exactly what CI tested."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.support.deploy import REPO, DockerIgnore, parse_dockerfile, stages

LOCKS = REPO / "requirements"
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)", re.MULTILINE)


def _pins(path: Path) -> dict[str, str]:
    text = path.read_text()
    return {_norm(name): version for name, version in _PIN.findall(text)}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _blocks(path: Path) -> list[str]:
    """One requirement per entry: the pin line and its continuation lines."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [line for line in text.splitlines() if line and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("name", ["runtime.txt", "dev.txt", "build.txt"])
def test_every_locked_package_is_pinned_with_hashes(name: str) -> None:
    """Each entry pins one exact version and carries at least one sha256 hash."""
    entries = _blocks(LOCKS / name)
    assert entries, name
    for entry in entries:
        if entry.startswith(("-c ", "--")):
            continue
        assert _PIN.match(entry), f"{name}: not an exact pin: {entry[:60]}"
        assert "--hash=sha256:" in entry, f"{name}: no hash for {entry.split()[0]}"


def test_image_runs_the_versions_the_tests_ran() -> None:
    """runtime.txt and build.txt pin the same version as dev.txt for every shared package."""
    dev = _pins(LOCKS / "dev.txt")
    for name in ("runtime.txt", "build.txt"):
        for package, version in _pins(LOCKS / name).items():
            if package in dev:
                assert dev[package] == version, f"{name}: {package} {version} vs dev {dev[package]}"


def _project() -> dict[str, object]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize(
    ("lock", "groups"),
    [("runtime.txt", ["speed"]), ("dev.txt", ["speed", "dev"])],
)
def test_lock_satisfies_every_declared_requirement(lock: str, groups: list[str]) -> None:
    """Each dependency of pyproject.toml is in the lock at a version its range allows."""
    project = _project()
    declared = list(project["dependencies"])  # type: ignore[call-overload]
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    for group in groups:
        declared += extras[group]
    pins = _pins(LOCKS / lock)
    for spec in declared:
        req = Requirement(spec)
        name = _norm(req.name)
        assert name in pins, f"{lock}: {name} is declared but not locked"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"{lock}: {name}=={pins[name]} outside {req.specifier}"
        )


def test_runtime_holds_only_what_the_gateway_imports() -> None:
    """The reference SAML peer (pysaml2) and test tools stay out of the runtime lock."""
    runtime = _pins(LOCKS / "runtime.txt")
    for test_only in ("pysaml2", "pytest", "mypy", "ruff", "selenium", "pyopenssl"):
        assert test_only not in runtime, test_only
    gateway_sources = "\n".join(p.read_text() for p in (REPO / "gateway").rglob("*.py"))
    assert not re.search(r"^\s*(import|from) saml2\b", gateway_sources, re.MULTILINE)


def test_dev_script_installs_from_the_lock_with_hashes() -> None:
    """./dev installs requirements/dev.txt with --require-hashes and the project without deps."""
    script = (REPO / "dev").read_text()
    assert "--require-hashes --no-deps -r requirements/dev.txt" in script
    assert "--no-deps --no-build-isolation -e ." in script
    assert "cmd_lock" in script and "pip-compile" in script


# What the production wheel must not carry: the development package and any
# module of the broker simulator, the sample portal, the demo or the dev keys.
_DEV_ONLY = re.compile(r"(^|/)(gateway_dev|simulator|portal|demo|demo_splitter|devkeys)(/|\.py$)")


def _tracked_sources(prefix: str) -> set[str]:
    out = subprocess.run(
        ["git", "ls-files", prefix], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout.split()
    return set(out)


def _check_production_wheel(wheel: Path) -> None:
    """The wheel holds gateway/ (every tracked file of it) and its metadata, nothing else."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    dev = [n for n in names if _DEV_ONLY.search(n)]
    assert dev == [], f"{wheel.name} carries development-only files: {dev}"
    outside = [n for n in names if not n.startswith(("gateway/", "eherkenning_gateway-"))]
    assert outside == [], f"{wheel.name}: {outside}"
    assert {n for n in names if n.startswith("gateway/")} == _tracked_sources("gateway/")


def test_wheel_built_from_the_repository_holds_no_development_code(tmp_path: Path) -> None:
    """`pip wheel .` (the locked hatchling, no isolation) packs gateway/ only: no simulator,
    sample portal, demo or development keys, although gateway_dev/ sits next to it."""
    assert (REPO / "gateway_dev" / "simulator").is_dir()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("-q", "-w", str(tmp_path), "."),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("eherkenning_gateway-*.whl")
    _check_production_wheel(wheel)


def _builder_run(dockerfile_text: str) -> str:
    builder = stages(parse_dockerfile(dockerfile_text))[0]
    runs = [i.body() for i in builder if i.keyword == "RUN"]
    assert len(runs) == 1, "the builder stage installs in one RUN"
    return runs[0]


@pytest.mark.slow
def test_dockerfile_builder_recipe_installs_from_the_lock(tmp_path: Path) -> None:
    """The builder stage's RUN, executed as plain processes, yields a working runtime venv.

    No container engine runs here, so the recipe runs on this machine against
    the build context that .dockerignore lets through; only the absolute
    /opt and /wheels paths move into a temporary folder. pysaml2 must not be
    importable in the result: the image does not need it.
    """
    text = (REPO / "Dockerfile").read_text()
    script = _builder_run(text)
    ignore = DockerIgnore.parse((REPO / ".dockerignore").read_text())
    context = tmp_path / "src"
    tracked = subprocess.run(
        ["git", "ls-files"], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout.split()
    for rel in tracked:
        if ignore.ignored(rel) or not (REPO / rel).is_file():
            continue
        dest = context / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest)
    assert (context / "requirements" / "runtime.txt").is_file()
    root = tmp_path / "root"
    script = (
        script.replace("/opt/", f"{root}/opt/")
        .replace("/wheels", f"{root}/wheels")
        .replace("python -m venv", f"{sys.executable} -m venv")
    )
    # The image's python is plain CPython: no user or site config should leak in
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    python = root / "opt" / "venv" / "bin" / "python"
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util, gateway.cli, xmlsec, lxml.etree;"
            "print(importlib.util.find_spec('saml2') is None)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "True"
    # The image's wheel: gateway/ only; every module of it imports from the wheel
    # and the locked runtime alone, and the development commands say where they are.
    (wheel,) = (root / "wheels").glob("eherkenning_gateway-*.whl")
    _check_production_wheel(wheel)
    imports = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib, importlib.util, pkgutil, gateway\n"
            "names = [m.name for m in pkgutil.walk_packages(gateway.__path__, 'gateway.')]\n"
            "for name in names:\n"
            "    if name != 'gateway.__main__':  # runs the CLI\n"
            "        importlib.import_module(name)\n"
            "print(len(names), importlib.util.find_spec('gateway_dev') is None)\n",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert imports.returncode == 0, imports.stderr[-3000:]
    count, no_dev = imports.stdout.split()
    assert int(count) > 50
    assert no_dev == "True"
    demo = subprocess.run(
        [str(root / "opt" / "venv" / "bin" / "gateway"), "demo"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert (demo.returncode, demo.stdout) == (2, "")
    assert demo.stderr == "gateway demo: development-only: install the repository with ./dev\n"
    # compose runs the development package on this very venv, its folder mounted
    # on PYTHONPATH: every module of it imports with the runtime lock alone.
    mounted = tmp_path / "mounted"
    shutil.copytree(
        REPO / "gateway_dev",
        mounted / "gateway_dev",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    dev = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib, pkgutil, gateway, gateway_dev\n"
            "found = pkgutil.walk_packages(gateway_dev.__path__, 'gateway_dev.')\n"
            "names = [m.name for m in found]\n"
            "for name in names:\n"
            "    if name != 'gateway_dev.__main__':  # runs the CLI\n"
            "        importlib.import_module(name)\n"
            "print(len(names), gateway.__file__)\n",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(mounted)},
        timeout=120,
        check=False,
    )
    assert dev.returncode == 0, dev.stderr[-3000:]
    count, gateway_file = dev.stdout.split()
    assert int(count) > 20
    assert Path(gateway_file).is_relative_to(root / "opt" / "venv"), "the wheel's gateway"
    frozen = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True
    ).stdout
    installed = {_norm(n): v for n, v in _PIN.findall(frozen)}
    runtime = _pins(LOCKS / "runtime.txt")
    for package, version in runtime.items():
        assert installed.get(package) == version, package
