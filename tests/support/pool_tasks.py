"""Functions the SAML worker-pool tests run in worker processes (importable by the workers)."""

from __future__ import annotations

import os
import signal
import time

from gateway.errors import SamlInvalid

_STATE: dict[str, str] = {}


def init(tag: str) -> None:
    _STATE["tag"] = tag


def init_fails(tag: str) -> None:
    raise ValueError(f"cannot start: {tag}")


def tagged(value: int) -> tuple[str, int, int]:
    """What the initializer left, the value, and which process answered."""
    return _STATE["tag"], value * 2, os.getpid()


def refuse(reason: str) -> None:
    raise SamlInvalid(reason)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def unpicklable() -> object:
    return lambda: None
