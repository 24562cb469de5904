"""Waiting for new facts: what a long-poll pull (``wait=S``) waits on.

A subscriber that is caught up asks for the next page with ``wait=S``; rather than answer
an empty page at once, the publisher holds the request until a fact beyond the subscriber's
cursor commits, or ``S`` runs out.  Waiting costs no worker thread and no database
connection: each waiting request is one future on the event loop.

The head of the facts table (its largest ``seq``) is what everyone watches.  A request
reads the head *before* it reads its page; since ``seq`` is commit-ordered, every fact its
page did not see has a larger ``seq`` than that head, so "the head moved past the one I
read" can never miss a fact.  The head is re-read:

- at once when this process commits facts (``committed``, callable from any thread);
- every ``poll_interval_s`` while anyone waits, which catches facts committed by other
  processes: the CLI, or the other replicas of a node on PostgreSQL.  One read per
  interval serves every waiting request of the process.

A woken request reads its page again; a fact in a scope it may not read wakes it for
nothing, and it waits again for what is left of its time.

Waiting is bounded per peer and in total (``LongPollLimit`` beyond either), and ``close``
answers every waiting request at once, so a stopping server never waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from stigmem_node.errors import StigmemError

log = logging.getLogger("stigmem_node.new_facts")

DEFAULT_POLL_INTERVAL_S = 0.2
MAX_WAIT_S = 30
#: A peer whose waiting request ended this recently still counts as following (``following``).
FOLLOW_GAP_S = 5.0
MAX_REMEMBERED = 10_000


class LongPollLimit(StigmemError):
    """Too many requests are already waiting (for this peer, or in all)."""

    code = "too_many_waiting"


@dataclass(eq=False)
class _Waiter:
    peer_id: str
    above: int
    woken: asyncio.Future[None] = field(repr=False)


class NewFacts:
    """Wakes waiting requests when the head of the facts table moves."""

    def __init__(self, read_head: Callable[[], Awaitable[int]], *, max_waiting: int, max_per_peer: int,
                 poll_interval_s: float = DEFAULT_POLL_INTERVAL_S) -> None:
        """``read_head``: awaits the facts table's largest ``seq`` (read off the loop)."""
        self._read_head = read_head
        self.max_waiting = max_waiting
        self.max_per_peer = max_per_peer
        self.poll_interval_s = poll_interval_s
        self._waiters: set[_Waiter] = set()
        self._per_peer: dict[str, int] = {}
        self._ended: dict[str, float] = {}  # peer id -> when its last waiting request ended
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick: asyncio.Event | None = None
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def following(self, peer_id: str) -> bool:
        """Whether this peer follows this node by long-poll: a request of it is waiting now,
        or one ended within ``FOLLOW_GAP_S`` (a follower opens its next one as soon as its
        pass ends, and that one reads the page first).  On the loop's thread."""
        if peer_id in self._per_peer:
            return True
        ended = self._ended.get(peer_id)
        return ended is not None and time.monotonic() - ended <= FOLLOW_GAP_S

    def committed(self) -> None:
        """Facts were committed by this process: re-read the head now (any thread)."""
        loop, kick = self._loop, self._kick
        if loop is None or kick is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(kick.set)

    def admit(self, peer_id: str) -> None:
        """Raise ``LongPollLimit`` if ``peer_id`` may not start waiting now."""
        if self._closed or len(self._waiters) >= self.max_waiting:
            raise LongPollLimit(message="too many requests are waiting for new facts; retry later", retry_after=1)
        if self._per_peer.get(peer_id, 0) >= self.max_per_peer:
            raise LongPollLimit(message=f"this peer already has {self.max_per_peer} requests waiting for new facts",
                                retry_after=1)

    async def wait_above(self, peer_id: str, head: int, timeout_s: float) -> bool:
        """Wait until the head is above ``head`` (True), or ``timeout_s`` passes or the node
        stops (False).  Raises ``LongPollLimit`` beyond the bounds."""
        self.admit(peer_id)
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._kick is None:
            self._loop, self._kick, self._poller = loop, asyncio.Event(), None
        kick = self._kick
        waiter = _Waiter(peer_id, head, loop.create_future())
        self._waiters.add(waiter)
        self._per_peer[peer_id] = self._per_peer.get(peer_id, 0) + 1
        try:
            if self._poller is None or self._poller.done():
                self._poller = loop.create_task(self._poll(kick), name="stigmem-new-facts")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter.woken), timeout_s)
            return waiter.woken.done() and not self._closed
        finally:
            self._waiters.discard(waiter)
            left = self._per_peer[peer_id] - 1
            if left:
                self._per_peer[peer_id] = left
            else:
                del self._per_peer[peer_id]
            if len(self._ended) >= MAX_REMEMBERED and peer_id not in self._ended:
                self._ended.clear()  # many peers come and go: forgetting costs a notification
            self._ended[peer_id] = time.monotonic()
            if not waiter.woken.done():
                waiter.woken.cancel()

    def close(self) -> None:
        """Answer every waiting request now, and admit no more (the node is stopping)."""
        self._closed = True
        for waiter in list(self._waiters):
            if not waiter.woken.done():
                waiter.woken.set_result(None)
        if self._poller is not None:
            self._poller.cancel()

    async def _poll(self, kick: asyncio.Event) -> None:
        while self._waiters and not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(kick.wait(), self.poll_interval_s)
            kick.clear()
            try:
                head = await self._read_head()
            except StigmemError as exc:  # the database is busy or away: waiters keep waiting
                log.debug("the head of the facts table could not be read: %s", exc.message)
                continue
            for waiter in list(self._waiters):
                if head > waiter.above and not waiter.woken.done():
                    waiter.woken.set_result(None)
