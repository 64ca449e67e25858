"""Where blocking work runs: disk work and librsync on threads (librsync and
blake3 release the GIL), or inline -- the in-memory tests run whole
conversations with no thread pool at all."""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class Workers:
    def __init__(self, threads: bool = True) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="delta") if threads else None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` off the event loop (or on it, inline)."""
        if self.threads:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    def submit(self, fn: Callable[..., T], *args: Any) -> "Future[T]":
        """`fn(*args)` started now, its result awaited later (computing ahead)."""
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        fut: Future[T] = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # delivered where the result is awaited, as a pool would
            fut.set_exception(e)
        return fut

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


INLINE = Workers(threads=False)
