"""The SAML worker processes (``gateway.saml.pool``): calls, errors, a lost worker, shutdown.

Real worker processes from the forkserver, as in production; the functions
they run live in ``tests.support.pool_tasks``.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from gateway.errors import LoginWorkerFailed, SamlInvalid
from gateway.saml.pool import ProcessPool, RemoteTraceback, WorkerLost
from tests.support import pool_tasks


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_calls_run_in_initialised_workers_and_errors_keep_their_type() -> None:
    pool = ProcessPool(2, pool_tasks.init, ("ready",))
    await pool.start()
    try:
        answers = await asyncio.gather(*(pool.run(pool_tasks.tagged, i) for i in range(20)))
        assert [a[:2] for a in answers] == [("ready", i * 2) for i in range(20)]
        assert {a[2] for a in answers} <= set(pool.pids)
        assert os.getpid() not in {a[2] for a in answers}
        with pytest.raises(SamlInvalid, match="signature_invalid") as caught:
            await pool.run(pool_tasks.refuse, "signature_invalid")
        assert isinstance(caught.value.__cause__, RemoteTraceback)
        assert "pool_tasks.py" in str(caught.value.__cause__)
        with pytest.raises(RuntimeError, match="cannot be pickled"):
            await pool.run(pool_tasks.unpicklable)
        assert (await pool.run(pool_tasks.tagged, 1))[:2] == ("ready", 2)
    finally:
        await pool.close()


async def test_a_killed_worker_fails_its_call_only_and_is_replaced() -> None:
    pool = ProcessPool(2, pool_tasks.init, ("ready",))
    await pool.start()
    try:
        before = set(pool.pids)
        slow = pool.run(pool_tasks.slow, 0.5)  # on the other worker meanwhile
        with pytest.raises(WorkerLost):
            await pool.run(pool_tasks.die)
        assert await slow == 0.5
        for _ in range(100):  # the replacement starts in the background
            if len(pool.pids) == 2:
                break
            await asyncio.sleep(0.05)
        after = set(pool.pids)
        assert len(after) == 2 and after != before
        answers = await asyncio.gather(*(pool.run(pool_tasks.tagged, i) for i in range(8)))
        assert {a[2] for a in answers} <= after
    finally:
        await pool.close()


async def test_a_caller_that_gives_up_leaves_the_worker_usable() -> None:
    pool = ProcessPool(1, pool_tasks.init, ("ready",))
    await pool.start()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pool.run(pool_tasks.slow, 0.3), 0.05)
        queued = pool.run(pool_tasks.tagged, 3)  # waits for the one worker
        assert (await queued)[:2] == ("ready", 6)
    finally:
        await pool.close()


async def test_a_failing_initializer_fails_start_and_leaves_no_process() -> None:
    pool = ProcessPool(2, pool_tasks.init_fails, ("broken",))
    with pytest.raises(ValueError, match="cannot start: broken"):
        await pool.start()
    assert pool.pids == []
    with pytest.raises(RuntimeError, match="closed"):
        pool.run(pool_tasks.tagged, 1)


async def test_close_stops_every_worker_and_fails_what_waits() -> None:
    pool = ProcessPool(1, pool_tasks.init, ("ready",))
    await pool.start()
    pids = pool.pids
    running = pool.run(pool_tasks.slow, 0.2)
    waiting = pool.run(pool_tasks.tagged, 1)
    await pool.close()
    for call in (running, waiting):
        with pytest.raises(RuntimeError, match="closed"):
            await call
    assert not any(_alive(pid) for pid in pids)


async def test_a_lost_worker_is_a_503_login_page_not_a_crash() -> None:
    from gateway.saml.provider import ServiceProvider

    pool = ProcessPool(1, pool_tasks.init, ("ready",))
    await pool.start()
    try:
        provider = ServiceProvider.__new__(ServiceProvider)
        provider._pool = pool
        with pytest.raises(LoginWorkerFailed) as caught:
            await provider._run(pool_tasks.die)
        assert caught.value.status == 503
        assert isinstance(caught.value.__cause__, WorkerLost)
    finally:
        await pool.close()
