"""The line between the production package ``gateway`` and the development package ``gateway_dev``.

``gateway_dev`` (broker simulator, sample portal, demo, development keys) may
import ``gateway``; ``gateway`` never imports ``gateway_dev``: it only hands the
development commands over by name when the package is there. What the
production wheel really holds is checked in tests/deploy/test_lock.py.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import DEV_COMMANDS, DEV_ONLY

REPO = Path(__file__).resolve().parents[2]

# Run with gateway_dev made unimportable, as in an installation of the wheel alone.
_WITHOUT_DEV = "import sys; sys.modules['gateway_dev'] = None\n"


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            found.append((node.lineno, base))
    return found


def _dynamic_imports(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every ``importlib.import_module("...")``/``__import__("...")`` call."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        first = node.args[0]
        if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
            found.append((node.lineno, str(first.value)))
    return found


def test_no_gateway_module_imports_gateway_dev() -> None:
    """No import statement under gateway/ names gateway_dev (dev may import prod, never back)."""
    modules = sorted((REPO / "gateway").rglob("*.py"))
    assert len(modules) > 50
    upward = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for path in modules
        for line, name in _imported_modules(path)
        if name == "gateway_dev" or name.startswith("gateway_dev.")
    ]
    assert upward == []


def test_the_only_handover_by_name_is_the_cli_dev_command() -> None:
    """gateway/ names gateway_dev in exactly one dynamic import: cli.py handing a command over."""
    by_name = [
        (str(path.relative_to(REPO)), name)
        for path in sorted((REPO / "gateway").rglob("*.py"))
        for _, name in _dynamic_imports(path)
        if name.startswith("gateway_dev")
    ]
    assert by_name == [("gateway/cli.py", "gateway_dev.cli")]


def test_every_gateway_module_imports_without_gateway_dev() -> None:
    """Each module under gateway/ imports in a process where gateway_dev cannot be imported."""
    script = _WITHOUT_DEV + (
        "import importlib, pkgutil, gateway\n"
        "modules = pkgutil.walk_packages(gateway.__path__, 'gateway.')\n"
        "names = [m.name for m in modules if m.name != 'gateway.__main__']  # runs the CLI\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout) > 50


@pytest.mark.parametrize("words", sorted(DEV_COMMANDS), ids=" ".join)
def test_dev_command_without_gateway_dev_says_so_in_one_line(words: tuple[str, ...]) -> None:
    """Without gateway_dev, each development command exits 2 with one line naming ./dev."""
    script = _WITHOUT_DEV + "from gateway.cli import main\nsys.exit(main())\n"
    done = subprocess.run(
        [sys.executable, "-c", script, *words, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"gateway {' '.join(words)}: {DEV_ONLY}\n"
    assert DEV_ONLY == "development-only: install the repository with ./dev"


@pytest.mark.parametrize("words", sorted(DEV_COMMANDS), ids=" ".join)
def test_dev_command_is_handed_to_gateway_dev_when_installed(words: tuple[str, ...]) -> None:
    """In the development install, `gateway CMD` and `python -m gateway_dev CMD` are one parser."""
    runs = {
        module: subprocess.run(
            [sys.executable, "-m", module, *words, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            check=False,
        )
        for module in ("gateway", "gateway_dev")
    }
    assert all(done.returncode == 0 for done in runs.values()), runs
    via_gateway = runs["gateway"].stdout
    assert via_gateway.startswith(f"usage: gateway {' '.join(words)} ")
    # The same words; argparse wraps the longer program name differently.
    via_dev = runs["gateway_dev"].stdout.replace("python -m gateway_dev", "gateway")
    assert via_dev.split() == via_gateway.split()
