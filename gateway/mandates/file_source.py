"""The registry as a file: YAML or CSV, validated, reloaded when it changes.

Format (``docs/mandates.md``, ``config/mandates.example.yaml``): one record per
mandate with the ``MandateRecord`` fields; YAML as ``{"mandates": [...]}``, CSV
with a header row. Every problem is reported with the file, the record's path
(``mandates[3].employer_kvk`` or ``line 5.employer_kvk``) and what is wrong.

Reloading is lazy and cheap: at most once per ``check_interval`` a lookup
``stat``s the file; only a changed (mtime, size, inode) triggers a re-parse,
which runs in a worker thread. An invalid new version is logged and ignored:
the last good data stays in force until the file is fixed.
"""

from __future__ import annotations

import asyncio
import csv
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import structlog
import yaml
from pydantic import ValidationError

from gateway.errors import ConfigInvalid, ConfigProblem, RegistryUnavailable
from gateway.mandates.model import Mandate, MandateRecord, describe_errors

log = structlog.get_logger("gateway.mandates")

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]


class _Loader(_BaseLoader):
    """The safe loader without implicit timestamps: dates stay text for pydantic to check
    (PyYAML would crash with a bare ValueError on 2024-13-01 and turn times into datetimes)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}

Index = dict[str, tuple[Mandate, ...]]
_Signature = tuple[int, int, int]


def parse_mandate_file(path: Path) -> Index:
    """Read and validate the whole file; raises ``ConfigInvalid`` listing every problem."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigInvalid([ConfigProblem(name, "", f"cannot read file: {exc}")]) from exc
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        rows = _yaml_rows(name, text)
    elif suffix == ".csv":
        rows = _csv_rows(name, text)
    else:
        raise ConfigInvalid([ConfigProblem(name, "", "unsupported extension: use .yaml or .csv")])

    problems: list[ConfigProblem] = []
    index: dict[str, list[Mandate]] = {}
    for where, row in rows:
        if not isinstance(row, dict):
            problems.append(ConfigProblem(name, where, "must be a mapping of field: value"))
            continue
        # Optional in the HTTP contract (implied by the URL), required in a file.
        admin = row.get("administrator_kvk")
        if admin is None or (isinstance(admin, str) and not admin.strip()):
            problems.append(ConfigProblem(name, f"{where}.administrator_kvk", "Field required"))
        try:
            record = MandateRecord.model_validate(row)
        except ValidationError as exc:
            problems.extend(ConfigProblem(name, p, m) for p, m in describe_errors(exc, where))
            continue
        if record.administrator_kvk is not None:
            index.setdefault(record.administrator_kvk, []).append(
                record.to_mandate(record.administrator_kvk)
            )
    if problems:
        raise ConfigInvalid(problems)
    return {kvk: tuple(ms) for kvk, ms in index.items()}


def _yaml_rows(name: str, text: str) -> Iterable[tuple[str, Any]]:
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader, C or pure Python
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise ConfigInvalid([ConfigProblem(name, where, f"not valid YAML: {exc}")]) from exc
    if doc is None:
        doc = {"mandates": []}
    if not isinstance(doc, dict) or set(doc) - {"version", "mandates"}:
        raise ConfigInvalid(
            [ConfigProblem(name, "", "expected a mapping with 'mandates' (and optional 'version')")]
        )
    if doc.get("version", 1) != 1:
        raise ConfigInvalid([ConfigProblem(name, "version", "only version 1 is supported")])
    mandates = doc.get("mandates") or []
    if not isinstance(mandates, list):
        raise ConfigInvalid([ConfigProblem(name, "mandates", "must be a list")])
    return ((f"mandates[{i}]", row) for i, row in enumerate(mandates))


def _csv_rows(name: str, text: str) -> list[tuple[str, Any]]:
    physical = 0

    def lines() -> Iterable[str]:
        # Comment and blank lines are skipped here, while counting physical
        # lines, so every problem names the line an editor shows.
        nonlocal physical
        for number, line in enumerate(text.splitlines(keepends=True), 1):
            physical = number
            if line.strip() and not line.lstrip().startswith("#"):
                yield line

    reader = csv.reader(lines())
    rows: list[tuple[str, Any]] = []
    try:
        header = next(reader, None)
        if header is None:
            return []
        columns = [h.strip() for h in header]
        if len(set(columns)) != len(columns):
            raise ConfigInvalid([ConfigProblem(name, f"line {physical}", "duplicate column names")])
        for row in reader:
            where = f"line {physical}"
            if len(row) != len(columns):
                raise ConfigInvalid(
                    [ConfigProblem(name, where, f"{len(row)} cells, the header has {len(columns)}")]
                )
            # An empty cell means "not set"; for scopes it means "no scopes".
            rows.append(
                (
                    where,
                    {k: v for k, v in zip(columns, row, strict=True) if v != "" or k == "scopes"},
                )
            )
    except csv.Error as exc:
        raise ConfigInvalid([ConfigProblem(name, f"line {physical}", str(exc))]) from exc
    return rows


class FileMandateSource:
    """A ``MandateSource`` over one YAML/CSV file; see the module docstring."""

    def __init__(
        self,
        path: Path | str,
        *,
        check_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.check_interval = check_interval
        self._clock = clock
        self._index: Index | None = None
        self._loaded: _Signature | None = None
        self._rejected: _Signature | None = None
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Load now, synchronously; raises ``ConfigInvalid`` (use at startup to fail fast)."""
        signature = self._signature()
        self._index = parse_mandate_file(self.path)
        self._loaded = signature
        self._checked_at = self._clock()

    def mark_stale(self) -> None:
        """Check the file on the next lookup (a revocation was pushed: it may have changed)."""
        self._checked_at = float("-inf")

    async def mandates_for(self, administrator_kvk: str) -> list[Mandate]:
        """Mandates for the administrator from the newest valid version of the file."""
        if self._clock() - self._checked_at >= self.check_interval:
            async with self._lock:
                if self._clock() - self._checked_at >= self.check_interval:
                    await self._maybe_reload()
        if self._index is None:
            raise RegistryUnavailable(f"mandate file {self.path} has never loaded")
        return list(self._index.get(administrator_kvk, ()))

    async def close(self) -> None:
        """Nothing to release; present for the protocol."""

    def _signature(self) -> _Signature | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def _maybe_reload(self) -> None:
        self._checked_at = self._clock()
        signature = self._signature()
        if signature is None:
            if self._rejected != (-1, -1, -1):
                self._rejected = (-1, -1, -1)
                log.error(
                    "mandate_file_missing",
                    file=str(self.path),
                    kept_last_good=self._index is not None,
                )
            return
        if signature in (self._loaded, self._rejected):
            return
        try:
            index = await asyncio.to_thread(parse_mandate_file, self.path)
        except ConfigInvalid as exc:
            self._rejected = signature
            log.error(
                "mandate_file_reload_failed",
                file=str(self.path),
                problems=[f"{p.path}: {p.message}" for p in exc.problems[:20]],
                problem_count=len(exc.problems),
                kept_last_good=self._index is not None,
            )
            return
        self._index, self._loaded, self._rejected = index, signature, None
        log.info(
            "mandate_file_loaded",
            file=str(self.path),
            administrators=len(index),
            mandates=sum(len(v) for v in index.values()),
        )
