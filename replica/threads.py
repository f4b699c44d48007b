"""Worker threads for the model's synchronous code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ModelThreads:
    """Runs synchronous model code off the event loop and counts calls still running.

    A thread cannot be interrupted: a cancelled caller stops waiting, but the call
    goes on, and `busy` still counts it.
    """

    def __init__(self, max_workers: int) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="model")
        self._lock = threading.Lock()
        self._busy = 0

    @property
    def busy(self) -> int:
        with self._lock:
            return self._busy

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return asyncio.get_running_loop().run_in_executor(self._executor, self._track, call)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.submit(fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _track(self, call: Callable[[], T]) -> T:
        with self._lock:
            self._busy += 1
        try:
            return call()
        finally:
            with self._lock:
                self._busy -= 1
