"""The package's import graph: no cycles, and nothing imports upward into ``gateway.app``.

Read from the source with ``ast`` (every ``import`` statement, including the
ones inside functions, where a cycle likes to hide), so the test sees what
Python would run. Imports under ``if TYPE_CHECKING:`` are left out: they only
name types for the checker and never execute.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gateway

PACKAGE = Path(gateway.__file__).parent

# The modules that build the application (and so may import gateway.app).
APP_BUILDERS = frozenset({"gateway.__main__", "gateway.cli", "gateway.server"})


def _modules(package: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at run time (a submodule, else its package)."""
    top = package.name
    modules = _modules(package)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        home = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found = set()
        for choices in _imported_names(tree, home):
            target = next(filter(None, map(resolve, choices)), None)
            if target:
                found.add(target)
        found.discard(name)
        graph[name] = {m for m in found if m == top or m.startswith(top + ".")}
    return graph


def _imported_names(node: ast.AST, home: str) -> list[tuple[str, ...]]:
    """What each import anywhere under ``node`` names, as choices in order (``home``: the
    package relative imports start from): ``from m import n`` is module ``m.n``, else ``m``."""
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        return [n for child in node.orelse for n in _imported_names(child, home)]
    names: list[tuple[str, ...]] = []
    if isinstance(node, ast.Import):
        names.extend((alias.name,) for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = home
            for _ in range(node.level - 1):
                anchor = anchor.rpartition(".")[0]
            base = f"{anchor}.{base}" if base else anchor
        for alias in node.names:
            names.append((f"{base}.{alias.name}", base))
    for child in ast.iter_child_nodes(node):
        names.extend(_imported_names(child, home))
    return names


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


def test_no_import_cycles() -> None:
    """No two gateway modules import each other, directly or through others."""
    assert cycles(import_graph()) == []


def test_nothing_imports_the_application_upward() -> None:
    """Only the modules that build the application import ``gateway.app``; the rest get what
    they need passed in."""
    importers = {m for m, deps in import_graph().items() if "gateway.app" in deps}
    assert importers <= APP_BUILDERS, sorted(importers - APP_BUILDERS)


def test_the_checker_sees_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    """An import inside a function body (where the old cycles hid) and a relative import
    count; an import under ``if TYPE_CHECKING:`` does not."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def later():\n    from . import c\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
    )
    (package / "e.py").write_text("from pkg.d import x\n")
    graph = import_graph(package)
    assert graph["pkg.b"] == {"pkg.c"}
    assert graph["pkg.d"] == set()
    assert graph["pkg.e"] == {"pkg.d"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
