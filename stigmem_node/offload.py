"""Blocking work off the event loop, in two bounded lanes of worker threads.

Storage is synchronous; an ``async`` endpoint or background task that called it directly
would freeze every request of the loop while SQLite waits for a lock.  Everything that
touches storage runs in a worker thread instead, in one of two lanes:

- the **read lane** for work that only reads (lists, lookups, a pull page, API-key and
  peer-token authentication);
- the **write lane** for work that writes (registrations, peer changes, new facts, nonces,
  audit rows).

Each lane has its own bound (an ``anyio.CapacityLimiter``): writers stuck behind the
database's write lock fill at most the write lane, and reads keep their own threads.  The
use cases receive the lanes as an ``Offload`` (a protocol), never the node.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Callable
from typing import ParamSpec, Protocol, TypeVar

import anyio
import anyio.to_thread

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_READ_THREADS = 32
DEFAULT_WRITE_THREADS = 16

_Limiters = tuple[anyio.CapacityLimiter, anyio.CapacityLimiter]  # read, write


class Offload(Protocol):
    """Runs blocking work in a worker thread of the right lane, and awaits its result."""

    async def read(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def write(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...


class Lanes:
    """A read lane and a write lane of at most ``read_threads`` and ``write_threads``
    worker threads.  Usable from any event loop (each loop gets limiters of its own)."""

    def __init__(self, read_threads: int = DEFAULT_READ_THREADS, write_threads: int = DEFAULT_WRITE_THREADS) -> None:
        if read_threads < 1 or write_threads < 1:
            raise ValueError("each lane needs at least one thread")
        self.read_threads = read_threads
        self.write_threads = write_threads
        self._limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Limiters] = weakref.WeakKeyDictionary()

    def _lanes(self) -> _Limiters:
        loop = asyncio.get_running_loop()
        lanes = self._limiters.get(loop)
        if lanes is None:
            lanes = self._limiters[loop] = (anyio.CapacityLimiter(self.read_threads),
                                            anyio.CapacityLimiter(self.write_threads))
        return lanes

    async def read(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in the read lane."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self._lanes()[0])

    async def write(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in the write lane."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self._lanes()[1])

    async def read_within(self, timeout_s: float, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` in the read lane, given up after ``timeout_s`` (``TimeoutError``); the
        thread is abandoned then, and finishes on its own."""
        call = functools.partial(fn, *args, **kwargs)
        with anyio.fail_after(timeout_s):
            return await anyio.to_thread.run_sync(call, limiter=self._lanes()[0], abandon_on_cancel=True)
