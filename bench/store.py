"""Store reads: CPU per GET of a session-sized value, redis-py's Python parser vs hiredis.

Run: ``./dev bench store``. One run on a redis-server it starts itself; both
parsers alternate over three rounds so the ratio is measured in one run.
The gateway uses hiredis (a runtime dependency): redis-py picks it up by itself.
"""

from __future__ import annotations

import asyncio
import os
import time

import redis.asyncio as r
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser

from tests.support.redis import RedisServer


async def run(url: str, parser: type, n: int = 20000) -> float:
    client = r.Redis.from_url(url, parser_class=parser)
    await client.set("k", os.urandom(3000))
    for _ in range(500):
        await client.get("k")
    t0 = time.process_time()
    for _ in range(n):
        await client.get("k")
    cpu = (time.process_time() - t0) / n * 1e6
    await client.aclose()
    return cpu


async def measure() -> None:
    with RedisServer() as s:
        res: dict[str, list[float]] = {}
        for _round in range(3):
            for name, p in (("python", _AsyncRESP2Parser), ("hiredis", _AsyncHiredisParser)):
                res.setdefault(name, []).append(await run(s.url, p))
        for name, v in res.items():
            print(f"{name:8} CPU us per GET (3 KB): " + ", ".join(f"{x:.1f}" for x in v))
        ratio = sorted(res["python"])[1] / sorted(res["hiredis"])[1]
        print(f"ratio python/hiredis (medians): {ratio:.2f}x")


def main() -> int:
    asyncio.run(measure())
    return 0
