"""The in-server pull schedule (``serve --pull-interval``)."""

from __future__ import annotations

import asyncio
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
    """Pull every active peer every ``interval_s`` seconds, each peer on its own.

    Each tick starts a pull for every active peer that has none running, so a slow or
    dead peer only ever delays itself.  A peer whose pull failed waits longer after each
    failure (twice the interval, then four times, … at most ``MAX_FAILURE_WAIT_S``), so a
    dead peer is not hammered.  ``stop()`` cancels the loop and the pulls in flight; a
    cancelled pull loses nothing (each page commits on its own).  Each pull of a peer logs
    one ``pull_summary`` line (``results.log_summary``).
    """

    MAX_FAILURE_WAIT_S = 300.0

    def __init__(self, subscriber: Subscriber, interval_s: float) -> None:
        self.subscriber = subscriber
        self.interval_s = interval_s
        self._running: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

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
            for peer in peers:
                task = self._running.get(peer.id)
                if (task is None or task.done()) and self._not_before.get(peer.id, 0.0) <= now:
                    self._running[peer.id] = asyncio.create_task(self._pull(peer), name=f"pull {peer.node_id}")
            await asyncio.sleep(self.interval_s)

    async def _pull(self, peer: PeerRecord) -> None:
        if self._client is None:
            raise RuntimeError("the scheduler is not running")
        result = await self.subscriber.pull_peer(self._client, peer)
        if result.ok:
            self._failures.pop(peer.id, None)
            self._not_before.pop(peer.id, None)
            log_summary(log, result, trigger="schedule")
            return
        failures = self._failures[peer.id] = self._failures.get(peer.id, 0) + 1
        wait = min(self.MAX_FAILURE_WAIT_S, self.interval_s * 2 ** failures)
        self._not_before[peer.id] = time.monotonic() + wait
        log_summary(log, result, trigger="schedule", next_try_s=wait)

    async def stop(self) -> None:
        """Cancel the loop and the pulls in flight, and close the client."""
        tasks = [t for t in [self._loop_task, *self._running.values()] if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
