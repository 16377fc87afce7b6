"""Model work off the event loop, with a hard bound on what may wait for it.

Why bounded: on a small machine a burst of requests cannot be served faster by queueing
them; an unbounded queue only turns every answer late. Past ``workers + max_queue`` pending
calls, :meth:`ModelPool.run` refuses at once (:class:`Overloaded`, answered 503 with
Retry-After), so a client or a load balancer can go elsewhere or back off.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Overloaded(Exception):
    """Every model thread is busy and the wait queue is full."""


class ModelPool:
    """``workers`` threads for model calls plus room for ``max_queue`` waiting ones.

    A call counts as pending from submission until its thread finishes, even when the
    client that asked has gone: the thread's work still occupies a core, so it must still
    count against the bound.
    """

    def __init__(self, workers: int, max_queue: int) -> None:
        self.workers = workers
        self.capacity = workers + max_queue
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shoprank-model")
        self._lock = threading.Lock()
        self._pending = 0
        self.rejected = 0

    @property
    def pending(self) -> int:
        """Calls running or waiting now."""
        return self._pending

    def _release(self, _future: object) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on a model thread and await its result; raise :class:`Overloaded` when full."""
        with self._lock:
            if self._pending >= self.capacity:
                self.rejected += 1
                raise Overloaded(f"{self._pending} requests are already running or waiting")
            self._pending += 1
        try:
            future = self._executor.submit(fn)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        """Finish running calls, start no queued ones."""
        self._executor.shutdown(wait=True, cancel_futures=True)
