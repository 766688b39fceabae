"""Walking the configuration model: every settings class, and where its keys sit in a file.

Tests that must cover every configuration key (the example file, the schema's
spellings) walk ``GatewayConfig`` here instead of listing keys, so a key added
to any settings model is covered the day it is added.
"""

from __future__ import annotations

import copy
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gateway.config import GatewayConfig

Loc = tuple[str | int, ...]


def model_types(annotation: Any) -> list[type[BaseModel]]:
    """The settings models inside a field's annotation (``X | None``, ``list[X]``, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in model_types(arg)]


def mentions(annotation: Any, kind: Any) -> bool:
    """Whether ``kind`` appears anywhere in ``annotation`` (``Loa | None`` mentions ``Loa``)."""
    return annotation is kind or any(mentions(a, kind) for a in typing.get_args(annotation))


def all_models(root: type[BaseModel] = GatewayConfig) -> Iterator[type[BaseModel]]:
    """Every settings model reachable from ``root``, each once."""
    seen: set[type[BaseModel]] = set()
    todo = [root]
    while todo:
        model = todo.pop(0)
        if model in seen:
            continue
        seen.add(model)
        yield model
        for field in model.model_fields.values():
            todo.extend(model_types(field.annotation))


def fits(item: Any, model: type[BaseModel]) -> bool:
    """Whether a mapping from a file is an instance of ``model`` (keys, and ``kind`` if any)."""
    if not isinstance(item, dict) or not set(item) <= set(model.model_fields):
        return False
    kind = model.model_fields.get("kind")
    return kind is None or item.get("kind", kind.default) == kind.default


def locations(
    data: Any, model: type[BaseModel] = GatewayConfig, loc: Loc = ()
) -> Iterator[tuple[Loc, type[BaseModel], str]]:
    """(location, model, field) of every key present in ``data`` that is a field of a model."""
    if not isinstance(data, dict):
        return
    for name, value in data.items():
        if name not in model.model_fields:
            continue
        yield (*loc, name), model, name
        candidates = model_types(model.model_fields[name].annotation)
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            here: Loc = (*loc, name) if i is None else (*loc, name, i)
            for candidate in candidates:
                if fits(item, candidate):
                    yield from locations(item, candidate, here)
                    break


def value_at(obj: Any, loc: Loc) -> Any:
    """The validated value at ``loc`` of a loaded configuration object."""
    for part in loc:
        obj = obj[part] if isinstance(part, int) else getattr(obj, part)
    return obj


# ---------------------------------------------------------------- config/gateway.example.yaml

_ALTERNATIVE = re.compile(r"^(\s*)# \| ?(.*)$")


def example_documents(text: str) -> list[tuple[str, str]]:
    """The example file's text, and one variant per ``# |`` block (name, text).

    A union setting (``mandates.source``: a registry service or a file) can only
    show one variant as live YAML; the other is written below it as a block of
    lines starting with ``# |``. The variant document replaces the live block
    (the preceding key of the same name at the same indentation) by the
    uncommented one, so it is a complete configuration that can be validated.
    """
    lines = text.splitlines()
    documents = [("example", text)]
    i = 0
    while i < len(lines):
        match = _ALTERNATIVE.match(lines[i])
        if not match:
            i += 1
            continue
        start = i
        block = []
        while i < len(lines) and (m := _ALTERNATIVE.match(lines[i])):
            block.append(m.group(1) + m.group(2))
            i += 1
        indent = match.group(1)
        key = block[0].strip().split(":")[0]
        live = max(j for j in range(start) if lines[j].startswith(f"{indent}{key}:"))
        end = live + 1
        while end < start and (
            not lines[end].strip()
            or lines[end].startswith(indent + " ")
            or lines[end].lstrip().startswith("#")
        ):
            end += 1
        variant = lines[:live] + block + lines[end:start] + lines[i:]
        documents.append((f"example with {key} = {block[1].strip()}", "\n".join(variant) + "\n"))
    return documents


def fill_optional_files(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with every file setting that is null given a path (and key pairs both files).

    So every ``Path`` setting of the model appears at least once in a test
    configuration, whatever the example leaves at its null default.
    """
    out = copy.deepcopy(data)
    for loc, model, name in list(locations(out)):
        parent = value_at_data(out, loc[:-1])
        if parent.get(name) is not None:
            continue
        annotation = model.model_fields[name].annotation
        dotted = ".".join(map(str, loc))
        nested = model_types(annotation)
        if mentions(annotation, Path):
            parent[name] = f"/etc/gateway/files/{dotted}"
        elif nested and all(
            mentions(f.annotation, Path) and f.is_required()
            for f in nested[0].model_fields.values()
        ):
            parent[name] = {f: f"/etc/gateway/files/{dotted}.{f}" for f in nested[0].model_fields}
    return out


def value_at_data(data: Any, loc: Loc) -> Any:
    """The raw value at ``loc`` of a configuration read from YAML."""
    for part in loc:
        data = data[part]
    return data
