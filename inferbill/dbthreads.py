"""Threads that do an event loop's blocking database work (inferbill.asgi)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from django.db import connections

T = TypeVar("T")
W = TypeVar("W")


def future_resolve(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], outcome: Any, failed: bool
) -> None:
    """From another thread: settle `future` on its loop, unless it was cancelled (the
    client went away)."""

    def resolve() -> None:
        if future.done():
            return
        if failed:
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    # RuntimeError: the loop is closed (shutdown), and nobody awaits the answer.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(resolve)


class QueueThreads(Generic[W]):
    """`count` threads that each run `serve(queue)` on one shared queue until it
    hands them a None.

    Started on first `put`, in the process that serves: gunicorn loads the
    application in its master and forks, and threads do not survive a fork.
    `close()` queues a None for each thread, after what is queued, and waits."""

    def __init__(
        self, count: int, *, name: str, serve: Callable[[queue.SimpleQueue[W | None]], None]
    ) -> None:
        self._count, self._name, self._serve = count, name, serve
        self._queue: queue.SimpleQueue[W | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def put(self, item: W) -> None:
        if not self._threads:
            self._threads = [
                threading.Thread(
                    target=self._serve, args=(self._queue,), name=f"{self._name}-{i}", daemon=True
                )
                for i in range(self._count)
            ]
            for thread in self._threads:
                thread.start()
        self._queue.put(item)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads = []


_Work = tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]]


class DatabaseThreads:
    """A fixed set of threads, each keeping its own Django database connection
    between calls (CONN_MAX_AGE, as a gunicorn thread does) and closing it when the
    set is closed, so that nothing holds a session after shutdown."""

    def __init__(self, count: int, *, name: str) -> None:
        self._threads: QueueThreads[_Work] = QueueThreads(count, name=name, serve=_serve)

    async def run(self, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._threads.put((call, loop, future))
        return await future

    def close(self) -> None:
        self._threads.close()


def _serve(work_queue: queue.SimpleQueue[_Work | None]) -> None:
    """A database thread: run each call, settle its future, close the thread's
    connections when told to stop."""
    try:
        while (work := work_queue.get()) is not None:
            call, loop, future = work
            try:
                outcome, failed = call(), False
            except BaseException as exc:
                outcome, failed = exc, True
            future_resolve(loop, future, outcome, failed)
    finally:
        connections.close_all()
