"""Reading raw configuration: environment overrides, YAML positions, problem wording.

Pure helpers on the parsed YAML (plain dicts and lists) and on pydantic's
error locations, used by ``gateway.config`` to report every problem with its
file, path and line. No configuration models live here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from gateway.errors import ConfigProblem

ENV_PREFIX = "GATEWAY__"


def problem_message(err: Any) -> str:
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown key (check the spelling; see config/gateway.example.yaml)"
    if err["type"] == "missing":
        return "required, but missing"
    value = err.get("input")
    if err["type"] in _SCALAR_TYPES:
        if isinstance(value, str):
            return f"{msg}, not the text {value!r} (write it without quotes)"
        if isinstance(value, bool):
            # YAML 1.1 reads yes/no/on/off as booleans.
            return f"{msg}, not {str(value).lower()} (YAML reads yes/no/on/off as true/false)"
    return msg.removeprefix("Value error, ")


# Type errors of the scalars the strict pass checks (gateway.config._json_type_errors).
_SCALAR_TYPES = frozenset({"int_type", "float_type", "bool_type", "string_type"})


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def env_key(loc: tuple[Any, ...]) -> str:
    return "__".join(str(p).lower() for p in loc)


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest YAML node on ``loc`` that exists."""
    line: int | None = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if getattr(key, "value", None) == part:
                    line = key.start_mark.line + 1
                    nxt = value
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            nxt = node.value[part]
        node = nxt
    if node is not None:
        line = node.start_mark.line + 1
    return line


def apply_env_overrides(
    data: dict[str, Any],
    environ: Mapping[str, str],
    file: str,
    problems: list[ConfigProblem],
) -> dict[str, str]:
    """Write ``GATEWAY__A__B=value`` into ``data['a']['b']``; return loc-key → variable name."""
    sources: dict[str, str] = {}
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        try:
            value = yaml.safe_load(environ[name])
        except yaml.YAMLError:
            value = environ[name]
        target: Any = data
        resolved: list[str] = []
        ok = True
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(target, list):
                idx = list_index(target, part)
                if idx is None:
                    problems.append(
                        ConfigProblem(
                            file,
                            format_loc(tuple(resolved)),
                            f"environment variable {name}: no list entry {part!r} "
                            "(use a position or a route name)",
                        )
                    )
                    ok = False
                    break
                resolved.append(str(idx))
                if last:
                    target[idx] = value
                else:
                    target = target[idx]
            elif isinstance(target, dict):
                resolved.append(part)
                if last:
                    target[part] = value
                else:
                    if not isinstance(target.get(part), dict | list):
                        target[part] = {}
                    target = target[part]
            else:
                ok = False
                break
        if ok:
            sources["__".join(resolved)] = name
    return sources


def list_index(items: list[Any], part: str) -> int | None:
    if part.isdigit():
        idx = int(part)
        return idx if idx < len(items) else None
    for i, item in enumerate(items):
        if isinstance(item, dict) and str(item.get("name", "")).lower() == part:
            return i
    return None
