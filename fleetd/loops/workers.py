"""Threads of the run path's own for its blocking calls (an attempt's launch, its TMPDIR's removal).

`asyncio.to_thread` builds a concurrent.futures Future (a Condition and its lock), copies the context,
checks the pool's idle semaphore and chains the result through two futures, on the event loop's thread,
for every call: at hundreds of runs a second that was a tenth of the loop's own time. Here a call is a
queue's put and, once done, one `call_soon_threadsafe`; a call nothing waits for is only the put.

The threads are daemon threads, started with the first call and never stopped: they hold no state, and
what a stopping daemon leaves queued (a TMPDIR's removal) its next start does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("fleetd.workers")
_Call = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop | None, "asyncio.Future[Any] | None"]


class Workers:
    def __init__(self, name: str, count: int) -> None:
        self.name = name
        self.count = count
        self._queue: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """`fn(*args)` in one of the threads; its result (or exception) on the running loop's future."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put((fn, args, loop, future))
        return future

    def put(self, fn: Callable[..., object], *args: Any) -> None:
        """`fn(*args)` in one of the threads, and nothing waits for it (a failure is logged)."""
        self._put((fn, args, None, None))

    def _put(self, call: _Call) -> None:
        if len(self._threads) < self.count:
            with self._lock:
                while len(self._threads) < self.count:
                    thread = threading.Thread(target=self._run, name=f"{self.name}-{len(self._threads)}", daemon=True)
                    thread.start()
                    self._threads.append(thread)
        self._queue.put(call)

    def _run(self) -> None:
        while True:
            fn, args, loop, future = self._queue.get()
            try:
                outcome: tuple[bool, Any] = (True, fn(*args))
            except BaseException as e:  # the caller's to see; the thread goes on
                outcome = (False, e)
                if future is None:
                    log.error("%s: %s failed: %s", self.name, getattr(fn, "__name__", fn), e)
            if loop is not None and future is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to answer
                    loop.call_soon_threadsafe(_settle, future, outcome)


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():  # its caller was cancelled meanwhile
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
