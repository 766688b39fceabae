"""Micro-benchmark of the identity token: signing (cache miss) vs cache hit, per algorithm.

Run: ``.venv/bin/python bench/tokens.py``. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import datetime as dt
import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import get_args

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog

from gateway.identity import Employer, Identity, Loa
from gateway.tokens import (
    KeySet,
    TokenKeyFiles,
    TokenMinter,
    TokenSettings,
    TokenSubject,
    init_keys_dir,
)
from gateway.tokens.settings import Algorithm


def _subject(n: int, ref: str = "s") -> TokenSubject:
    identity = Identity(
        acting_subject="pseudo",
        legal_subject_kvk="87654321",
        legal_subject_name="Administratiekantoor",
        loa=Loa.EH3,
        service_id="urn:x",
        login_time=dt.datetime.now(dt.UTC),
    )
    allowed = tuple(
        Employer(kvk=f"{10000000 + i:08d}", name=f"W{i}", scopes=frozenset({"contributions"}))
        for i in range(n)
    )
    return TokenSubject(identity=identity, allowed=allowed, session_ref=ref)


def _rate(fn: Callable[[], None], seconds: float = 1.0) -> float:
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            fn()
        count += 100
    return count / elapsed


def _measure(minter: TokenMinter, subject: TokenSubject) -> tuple[float, float, float]:
    """Seconds per: first mint of a session version, renewal (sign only), cache hit."""
    audiences = (f"aud-{i}" for i in itertools.count())

    def first() -> None:
        minter.clear()  # also drops the cached set summary
        minter.mint(subject, "portal")

    def renew() -> None:
        minter.mint(subject, next(audiences))  # a new cache key: signs, summary cached

    def hit() -> None:
        minter.mint(subject, "portal")

    slow = len(subject.allowed) > 100
    return 1 / _rate(first, 0.5 if slow else 1.0), 1 / _rate(renew), 1 / _rate(hit)


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    head = ("algorithm", "employers", "first µs", "sign µs", "signs/s", "hit µs", "bytes")
    print("{:<9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>6}".format(*head))
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in get_args(Algorithm):
            keys_dir = Path(tmp) / algorithm
            init_keys_dir(keys_dir, algorithm)
            settings = TokenSettings(
                issuer="https://gw.example",
                algorithm=algorithm,
                keys=TokenKeyFiles.in_dir(keys_dir),
            )
            minter = TokenMinter(settings, KeySet.from_settings(settings))
            for n in (3, 100, 10_000):
                subject = _subject(n)
                _ = subject.fingerprint  # computed once per session version
                size = len(minter.mint(subject, "portal"))
                first, sign, hit = _measure(minter, subject)
                print(
                    f"{algorithm:<9} {n:>9} {first * 1e6:>9.0f} {sign * 1e6:>9.0f} "
                    f"{1 / sign:>8.0f} {hit * 1e6:>7.2f} {size:>6}"
                )


if __name__ == "__main__":
    main()
