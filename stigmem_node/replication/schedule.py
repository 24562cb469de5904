"""The in-server pull schedule (``serve --pull-interval``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx

from stigmem_node.errors import StigmemError
from stigmem_node.replication.results import log_summary
from stigmem_node.replication.subscriber import Subscriber
from stigmem_node.store.db import StorageError
from stigmem_node.store.peers import PeerRecord

log = logging.getLogger("stigmem_node.replication")


class Scheduler:
    """Pull every active peer every ``interval_s`` seconds, each peer on its own; or, with
    ``wait_s``, follow each one: pass after pass, each opening with a long-poll
    (``GET /v1/federation/facts?wait=S``) that the peer answers as soon as it commits new
    facts, so they arrive within a second instead of an interval.  A peer that answers a
    long-poll at once with nothing (it does not hold requests) is pulled by the interval
    for ``NO_WAIT_RETRY_S``; a failure falls back to the interval with the backoff below.

    Each tick (every ``SCAN_S`` at most) starts a pull for every active peer that has none
    running and is due (a new peer at once, then an interval after its last start), so a
    slow or dead peer only ever delays itself.  A peer whose pull failed waits longer after each
    failure (twice the interval, then four times, … at most ``MAX_FAILURE_WAIT_S``), so a
    dead peer is not hammered.  ``pull_soon`` (a peer's signed notification) starts a pass of
    a peer at once, or right after the one running.  ``stop()`` cancels the loop and the pulls in flight; a
    cancelled pull loses nothing (each page commits on its own).  Each pull of a peer logs
    one ``pull_summary`` line (``results.log_summary``).
    """

    MAX_FAILURE_WAIT_S = 300.0
    #: How long a peer that answered a long-poll at once with nothing is pulled by the interval
    #: only, before it is asked to hold a request again.
    NO_WAIT_RETRY_S = 600.0
    SCAN_S = 2.0

    def __init__(self, subscriber: Subscriber, interval_s: float, *, wait_s: int = 0) -> None:
        """``wait_s``: follow each peer with long-polls of that many seconds (0: interval only)."""
        self.subscriber = subscriber
        self.interval_s = interval_s
        self.wait_s = wait_s
        self._no_wait_until: dict[str, float] = {}
        self._due: dict[str, float] = {}  # when each peer's next pass is due (monotonic)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._again: set[str] = set()  # peers to pass again as soon as their running pass ends
        self._wake = asyncio.Event()  # cuts the loop's wait short (a peer to pull now)

    def start(self) -> None:
        """Start the schedule (on the running event loop)."""
        self._client = self.subscriber.client(pool_per_peer=True)
        self._loop_task = asyncio.create_task(self._loop(), name="stigmem-pull-schedule")

    async def _loop(self) -> None:
        while True:
            try:
                peers = await self.subscriber.active_peers()
            except (StorageError, StigmemError):
                log.exception("cannot list peers to pull; trying again next interval")
                peers = []
            now = time.monotonic()
            active = {p.id for p in peers}
            for gone in [pid for pid in self._running if pid not in active and self._running[pid].done()]:
                self._running.pop(gone, None)
                self._failures.pop(gone, None)
                self._not_before.pop(gone, None)
                self._no_wait_until.pop(gone, None)
                self._due.pop(gone, None)
            for peer in peers:
                task = self._running.get(peer.id)
                due = max(self._not_before.get(peer.id, 0.0), self._due.get(peer.id, 0.0))
                if (task is None or task.done()) and due <= now:
                    self._due[peer.id] = now + self.interval_s
                    self._running[peer.id] = asyncio.create_task(self._pull(peer), name=f"pull {peer.node_id}")
            # Look for newly active peers at least every SCAN_S, whatever the interval: a peer
            # approved now is pulled now, not an interval later.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(self.interval_s, self.SCAN_S))
            self._wake.clear()

    def pull_soon(self, peer_id: str) -> str:
        """A pass of this peer as soon as may be (it notified new facts): ``"started"`` (at
        the loop's next turn, now), ``"queued"`` (a pass is running: another follows it at
        once) or ``"backing_off"`` (its pulls failed lately: the backoff stands)."""
        if self._not_before.get(peer_id, 0.0) > time.monotonic():
            return "backing_off"
        task = self._running.get(peer_id)
        if task is not None and not task.done():
            self._again.add(peer_id)
            return "queued"
        self._due[peer_id] = 0.0
        self._wake.set()
        return "started"

    async def _pull(self, peer: PeerRecord) -> None:
        """``_follow``, again for as long as notifications asked for another pass meanwhile."""
        while True:
            self._again.discard(peer.id)
            if not await self._follow(peer) or peer.id not in self._again:
                return
            try:
                peer = await self.subscriber.current(peer.id)
            except (StorageError, StigmemError):  # removed, or the database is away: the loop decides
                return
            if peer.status != "active":
                return

    async def _follow(self, peer: PeerRecord) -> bool:
        """One pass (False if it failed); when following, pass after pass (each first page a
        long-poll) for as long as the peer is active, holds the requests and answers without
        error, and no notification asks for a pass of its own."""
        if self._client is None:
            raise RuntimeError("the scheduler is not running")
        while True:
            wait_s = self.wait_s if self._no_wait_until.get(peer.id, 0.0) <= time.monotonic() else 0
            result = await self.subscriber.pull_peer(self._client, peer, wait_s=wait_s)
            if not result.ok:
                failures = self._failures[peer.id] = self._failures.get(peer.id, 0) + 1
                wait = min(self.MAX_FAILURE_WAIT_S, self.interval_s * 2 ** failures)
                self._not_before[peer.id] = time.monotonic() + wait
                log_summary(log, result, trigger="schedule", next_try_s=wait)
                return False
            self._failures.pop(peer.id, None)
            self._not_before.pop(peer.id, None)
            moved = result.new or result.duplicates or result.rejected or result.tombstones or result.tombstones_refused
            held = result.duration_s >= wait_s / 2  # the peer held the long-poll
            if not (wait_s and held and not moved):  # following, a pass that only waited is not worth a line
                log_summary(log, result, trigger="follow" if wait_s else "schedule")
            if not wait_s or peer.id in self._again:
                return True
            if not moved and not held:
                # Answered at once with nothing: the peer does not hold requests (a reference
                # node ignores wait), or another process of this node follows it.  Back to the
                # interval for this peer, so it is not asked again and again.
                self._no_wait_until[peer.id] = time.monotonic() + self.NO_WAIT_RETRY_S
                return True
            try:
                peer = await self.subscriber.current(peer.id)
            except (StorageError, StigmemError):  # removed, or the database is away: the loop decides
                return True
            if peer.status != "active":
                return True

    async def stop(self) -> None:
        """Cancel the loop and the pulls in flight, and close the client."""
        tasks = [t for t in [self._loop_task, *self._running.values()] if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
