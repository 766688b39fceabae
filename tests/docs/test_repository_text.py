"""The repository describes what the code is, on its own: no stale or outside references.

Every comment, docstring, doc page and config comment is read for phrases that
were once true of the code and are not any more, for words about how the work
was organised rather than what it does, and for paths outside the repository
(a reader of this repository cannot follow them).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve()

_FILES = sorted(
    {
        *ROOT.glob("*.md"),
        *ROOT.glob("*.toml"),
        ROOT / "Dockerfile",
        ROOT / "dev",
        *(ROOT / "docs").rglob("*.md"),
        *(ROOT / "config").rglob("*.yaml"),
        *(ROOT / "deploy").rglob("*.yaml"),
        *(ROOT / "gateway").rglob("*.py"),
        *(ROOT / "tests").rglob("*.py"),
        *(ROOT / "bench").rglob("*.py"),
    }
    - {HERE, ROOT / "CHANGELOG.md"}  # the changelog tells history; this file names the phrases
)

_STALE = {
    r"edge middleware": "the edge is a handler (gateway/edge.py), not a middleware",
    r"design\.md": "no such document",
    r"deny-list removed before routing": "the deny-list is applied when forwarding",
    r"every key in one place": "the logout key lives apart from the others",
    r"\bthe lead\b|\(lead\)|\blead's\b": "how the work was organised, not what the code is",
    r"\bsubagent\b": "how the work was organised, not what the code is",
    r"\.\./shared\b|\bshared[/]docs[/]": "a file outside the repository",
    r"/work/(?:main|wt|\.library)\b": "a path on a developer's machine",
}


def test_no_stale_or_outside_references() -> None:
    """None of the phrases that were true once (or never outside one machine) appear."""
    found = []
    for path in _FILES:
        text = path.read_text(encoding="utf-8", errors="replace")
        for pattern, why in _STALE.items():
            for m in re.finditer(pattern, text, flags=re.IGNORECASE):
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0)!r} ({why})")
    assert found == []
