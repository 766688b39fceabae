"""Worker processes for the CPU-heavy SAML work, driven straight from the event loop.

Each worker is one process (started through the ``forkserver``: the event
loop's process is never forked) with two pipes: tasks in, results out. The
loop reads the result pipes through its own non-blocking pipe transports, so a
call costs one write, one read and the pickling on each side; no helper
threads, locks or shared queues (``concurrent.futures.ProcessPoolExecutor``
spent three to six times as much CPU per call on that machinery, a few
hundred microseconds per login).

A worker that dies (killed, out of memory) fails only the call it was running
(``WorkerLost``) and is replaced; the other workers and later calls go on.
A call whose caller gave up still runs to the end in its worker, and its
result is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import os
import pickle
import struct
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("gateway.saml.pool")

T = TypeVar("T")

_HEADER = struct.Struct("!i")  # multiprocessing.Connection's frame header (messages < 2 GiB)
_RESPAWN_DELAY = 1.0
_EXIT_WAIT = 5.0


class WorkerLost(Exception):
    """The worker process running a call ended before it answered."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker (its ``__cause__``)."""

    def __str__(self) -> str:
        return str(self.args[0])


def _serve(
    tasks: Connection,
    results: Connection,
    initializer: Callable[..., object],
    initargs: tuple[object, ...],
) -> None:
    """A worker process: run the initializer, say so, then answer calls until the pipe closes."""
    try:
        initializer(*initargs)
    except BaseException as exc:  # the parent logs it and does not start this worker
        results.send_bytes(_answer(False, exc))
        return
    results.send_bytes(_answer(True, None))
    while True:
        try:
            data = tasks.recv_bytes()
        except (EOFError, OSError):
            return  # the gateway closed the pool (or is gone)
        try:
            # Only the gateway's own process writes to this pipe.
            fn, args = pickle.loads(data)  # noqa: S301
            payload = _answer(True, fn(*args))
        except BaseException as exc:
            payload = _answer(False, exc)
        results.send_bytes(payload)


def _answer(ok: bool, value: object) -> bytes:
    """A pickled ``(ok, value, traceback text)``; an unpicklable one becomes an error."""
    text = traceback.format_exc() if not ok else None
    try:
        return pickle.dumps((ok, value, text), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        error = RuntimeError(f"worker answer cannot be pickled: {exc!r}; value: {value!r:.200}")
        return pickle.dumps((False, error, text), protocol=pickle.HIGHEST_PROTOCOL)


class _Frames(asyncio.Protocol):
    """Splits a worker's result pipe into messages."""

    def __init__(self, worker: _Worker) -> None:
        self._worker = worker
        self._buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            end = _HEADER.size + size
            if len(self._buf) < end:
                return
            message = bytes(self._buf[_HEADER.size : end])
            del self._buf[:end]
            self._worker.answered(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._worker.lost()


class _Worker:
    def __init__(self, pool: ProcessPool, slot: int) -> None:
        self.pool = pool
        self.slot = slot
        self.ready: asyncio.Future[None] = pool.loop.create_future()
        self.call: asyncio.Future[Any] | None = None
        self.alive = True
        ctx = multiprocessing.get_context("forkserver")
        task_r, task_w = ctx.Pipe(duplex=False)
        result_r, result_w = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=_serve,
            args=(task_r, result_w, pool.initializer, pool.initargs),
            name=f"gateway-saml-{slot}",
            daemon=True,
        )
        self.process.start()
        task_r.close()
        result_w.close()
        self._task_w, self._result_r = task_w, result_r
        self._writer: asyncio.WriteTransport | None = None
        self._reader: asyncio.ReadTransport | None = None

    async def open(self) -> None:
        loop = self.pool.loop
        result_r, task_w = self._result_r, self._task_w
        try:
            self._reader, _ = await loop.connect_read_pipe(
                lambda: _Frames(self), os.fdopen(os.dup(result_r.fileno()), "rb", buffering=0)
            )
            self._writer, _ = await loop.connect_write_pipe(
                asyncio.Protocol, os.fdopen(os.dup(task_w.fileno()), "wb", buffering=0)
            )
        finally:
            result_r.close()
            task_w.close()
        await self.ready

    def send(self, payload: bytes, call: asyncio.Future[Any]) -> None:
        self.call = call
        assert self._writer is not None
        self._writer.write(_HEADER.pack(len(payload)) + payload)

    def answered(self, message: bytes) -> None:
        ok, value, text = pickle.loads(message)  # noqa: S301 - from our own worker
        if not self.ready.done():
            if ok:
                self.ready.set_result(None)
            else:
                self.ready.set_exception(_with_remote(value, text))
            return
        call, self.call = self.call, None
        if call is not None and not call.done():
            if ok:
                call.set_result(value)
            else:
                call.set_exception(_with_remote(value, text))
        self.pool.idle(self)

    def lost(self) -> None:
        if not self.alive:
            return
        self.alive = False
        started = self.ready.done() and self.ready.exception() is None
        if self._writer is not None:
            self._writer.close()
        error = WorkerLost(f"SAML worker {self.slot} (pid {self.process.pid}) ended")
        if not self.ready.done():
            self.ready.set_exception(error)
        call, self.call = self.call, None
        if call is not None and not call.done():
            call.set_exception(error)
        if started:  # a worker that never started is its starter's to handle
            self.pool.lost(self)

    def close(self) -> None:
        """Close both pipes: the worker exits after its call; that call fails here."""
        self.alive = False
        if self._writer is not None:
            self._writer.close()
        if self._reader is not None:
            self._reader.close()
        call, self.call = self.call, None
        if call is not None and not call.done():
            call.set_exception(RuntimeError("the SAML worker pool is closed"))


def _with_remote(exc: BaseException, text: str | None) -> BaseException:
    if text:
        exc.__cause__ = RemoteTraceback(text)
    return exc


class ProcessPool:
    """``workers`` processes, each set up by ``initializer(*initargs)``; ``run`` calls in one."""

    def __init__(
        self, workers: int, initializer: Callable[..., object], initargs: tuple[object, ...] = ()
    ) -> None:
        self.size = workers
        self.initializer = initializer
        self.initargs = initargs
        self._workers: dict[int, _Worker] = {}
        self._idle: collections.deque[_Worker] = collections.deque()
        self._queue: collections.deque[tuple[bytes, asyncio.Future[Any]]] = collections.deque()
        self._closed = False
        self._respawns: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "ProcessPool.start() was not called"
        return self._loop

    @property
    def pids(self) -> list[int]:
        """The live workers' process IDs."""
        return [w.process.pid for w in self._workers.values() if w.alive and w.process.pid]

    async def start(self) -> None:
        """Start every worker; raise the first initializer error (nothing is left running)."""
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.gather(*(self._spawn(slot) for slot in range(self.size)))
        except BaseException:
            await self.close()
            raise

    async def _spawn(self, slot: int) -> None:
        worker = _Worker(self, slot)
        self._workers[slot] = worker
        try:
            await worker.open()
        except BaseException:
            worker.close()
            await self._reap(worker)
            raise
        self.idle(worker)

    def run(self, fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
        """Call ``fn(*args)`` in a worker (both must pickle); its exception is raised here."""
        if self._closed:
            raise RuntimeError("the SAML worker pool is closed")
        call: asyncio.Future[T] = self.loop.create_future()
        payload = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
        while self._idle:
            worker = self._idle.popleft()
            if worker.alive:
                worker.send(payload, call)
                return call
        self._queue.append((payload, call))
        return call

    def idle(self, worker: _Worker) -> None:
        while self._queue and worker.alive:
            payload, call = self._queue.popleft()
            if not call.done():  # the caller may have given up while it waited
                worker.send(payload, call)
                return
        if worker.alive:
            self._idle.append(worker)

    def lost(self, worker: _Worker) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        if self._closed or self._workers.get(worker.slot) is not worker:
            return
        log.error("saml_worker_lost", slot=worker.slot, pid=worker.process.pid)
        task = self.loop.create_task(self._replace(worker))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _replace(self, worker: _Worker) -> None:
        await self._reap(worker)
        while not self._closed:
            try:
                await self._spawn(worker.slot)
                log.info("saml_worker_replaced", slot=worker.slot)
                return
            except Exception as exc:
                log.error("saml_worker_start_failed", slot=worker.slot, error=repr(exc))
                if not any(w.alive for w in self._workers.values()):
                    self._fail_queue(WorkerLost("no SAML worker is running"))
                await asyncio.sleep(_RESPAWN_DELAY)

    def _fail_queue(self, error: Exception) -> None:
        while self._queue:
            _, call = self._queue.popleft()
            if not call.done():
                call.set_exception(error)

    async def _reap(self, worker: _Worker) -> None:
        """Wait for the process to end (a few seconds), else kill it."""
        process = worker.process
        await self.loop.run_in_executor(None, process.join, _EXIT_WAIT)
        if process.exitcode is None:
            process.kill()
            await self.loop.run_in_executor(None, process.join, _EXIT_WAIT)
        with contextlib.suppress(ValueError):  # still running after a kill: leave it be
            process.close()

    async def close(self) -> None:
        """Let running calls finish (up to a few seconds), stop every worker, fail the rest."""
        self._closed = True
        for task in list(self._respawns):
            task.cancel()
        self._fail_queue(RuntimeError("the SAML worker pool is closed"))
        workers = list(self._workers.values())
        self._workers.clear()
        self._idle.clear()
        for worker in workers:
            worker.close()
        await asyncio.gather(*(self._reap(w) for w in workers), return_exceptions=True)
