"""A serving node's background work, started and stopped by the node (``Node.start_background``).

- **Database upkeep** (``Maintenance``): once a second, in a thread of its own, delete
  expired nonces (up to a batch, walking the expiry index) and, on SQLite, move WAL pages
  into the database file (a PASSIVE checkpoint, which never blocks readers or writers);
  on PostgreSQL, every few seconds, refresh the planner's statistics of tables that changed
  a lot.
  The serving connection's auto-checkpoint is turned off, so its commits never wait for a
  checkpoint and its fsync.  Storage offers the operations; this module runs them.
- **Key watch** (``watch_identity``): adopt a key rotated by the CLI while the server runs.
- **Audit sealing** (``seal_audit``): a signed audit checkpoint once a row has waited the
  configured interval unsealed.
- **API-key touches** (``write_touches``): the ``last_used_at`` updates queued by
  authentication, written together once a second, or dropped when the database is busy.
- **Replication activity** (``write_activity``): the pulls noted by the publisher
  (``stigmem_node.activity``), written together every two seconds; kept for the next
  write when the database is busy.  Maintenance drops per-minute counts older than
  ``activity.TRAFFIC_KEPT_MINUTES``.

The asynchronous tasks run their storage work in the lanes (``stigmem_node.offload``),
never on the event loop.

The in-server pull schedule is ``stigmem_node.replication.schedule.Scheduler``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

from stigmem_node.activity import TRAFFIC_KEPT_MINUTES, Activity, ActivityStore, minute_of
from stigmem_node.apikeys import DeferredTouches
from stigmem_node.audit import AuditTrail
from stigmem_node.errors import StigmemError
from stigmem_node.offload import Offload
from stigmem_node.store.activity import ActivityRepo
from stigmem_node.store.db import Database, StorageBusy, StorageUnavailable
from stigmem_node.store.nonces import NonceRepo

log = logging.getLogger("stigmem_node.background")

MAINTENANCE_INTERVAL_S = 1.0
STATISTICS_EVERY = 5  # rounds between checks of the planner's statistics (PostgreSQL)
NONCE_PRUNE_BATCH = 20_000
IDENTITY_WATCH_INTERVAL_S = 2.0
MAX_SEAL_WAIT_S = 60.0
TOUCH_INTERVAL_S = 1.0
ACTIVITY_INTERVAL_S = 2.0
TRAFFIC_PRUNE_EVERY = 60  # maintenance rounds between prunes of the per-minute fact counts


class Maintenance:
    """Database upkeep off the event loop: started at once, ``stop()`` ends it."""

    def __init__(self, db: Database, now_ms: Callable[[], int], interval_s: float = MAINTENANCE_INTERVAL_S,
                 prune_batch: int = NONCE_PRUNE_BATCH) -> None:
        """Call off the event loop (it turns off ``db``'s auto-checkpoint)."""
        self.db = db
        self.now_ms = now_ms
        self.interval_s = interval_s
        self.prune_batch = prune_batch
        self._stop = threading.Event()
        db.disable_autocheckpoint()
        self._thread = threading.Thread(target=self._run, name="stigmem-maintenance", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        db = self.db
        nonces = NonceRepo(db)
        traffic = ActivityRepo(db)
        rounds = 0
        while not self._stop.wait(self.interval_s):
            rounds += 1
            try:
                nonces.prune(self.now_ms(), batch=self.prune_batch)
                db.checkpoint()
                if rounds % TRAFFIC_PRUNE_EVERY == 1:
                    traffic.prune_traffic(minute_of(self.now_ms()) - TRAFFIC_KEPT_MINUTES)
                if rounds % STATISTICS_EVERY == 1:
                    for table in db.refresh_statistics():
                        log.debug("planner statistics of %s refreshed", table)
            except (StorageBusy, StorageUnavailable) as exc:  # the next round tries again
                log.debug("maintenance deferred: %s", exc.message)
            except Exception:  # keep the thread alive: an unpruned cache only grows
                log.exception("database maintenance failed; trying again in %.0f s", self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


async def watch_identity(adopt_rotated_key: Callable[[], bool], key_id: Callable[[], str], lanes: Offload,
                         interval_s: float = IDENTITY_WATCH_INTERVAL_S) -> None:
    """Every ``interval_s``, adopt a key rotated by another process (the CLI)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            if await lanes.read(adopt_rotated_key):
                log.info("signing key rotated: now %s", key_id())
        except StigmemError as exc:  # the database cannot be read now: try again at the next tick
            log.warning("key watch postponed: %s", exc.message)


async def seal_audit(audit: AuditTrail, interval_s: float, lanes: Offload) -> None:
    """Append a signed audit checkpoint once a row has waited ``interval_s`` unsealed."""
    while True:
        try:
            await lanes.write(audit.checkpoint_if_due, interval_s)
        except StigmemError as exc:  # the database was busy: try again at the next tick
            log.warning("audit checkpoint postponed: %s", exc.message)
        await asyncio.sleep(min(interval_s, MAX_SEAL_WAIT_S))


async def write_touches(touches: DeferredTouches, write: Callable[[dict[str, str]], None], lanes: Offload,
                        interval_s: float = TOUCH_INTERVAL_S) -> None:
    """Every ``interval_s``, write the queued ``last_used_at`` touches in one transaction
    (``write``, in the write lane).  When the database is busy they are dropped: a later
    use of the key touches it again.  ``flush_touches`` writes the rest at the end."""
    while True:
        await asyncio.sleep(interval_s)
        await flush_touches(touches, write, lanes)


async def flush_touches(touches: DeferredTouches, write: Callable[[dict[str, str]], None], lanes: Offload) -> None:
    pending = touches.take()
    if not pending:
        return
    try:
        await lanes.write(write, pending)
    except StigmemError as exc:
        log.debug("dropped %d API-key last-use updates: %s", len(pending), exc.message)


Transaction = Callable[[], AbstractContextManager[object]]


async def write_activity(activity: Activity, store: ActivityStore, transaction: Transaction, lanes: Offload,
                         interval_s: float = ACTIVITY_INTERVAL_S) -> None:
    """Every ``interval_s``, write the pulls noted since the last write (in the write lane)."""
    while True:
        await asyncio.sleep(interval_s)
        await flush_activity(activity, store, transaction, lanes)


async def flush_activity(activity: Activity, store: ActivityStore, transaction: Transaction, lanes: Offload) -> None:
    if not activity.pending():
        return
    try:
        await lanes.write(activity.flush, store, transaction)
    except StigmemError as exc:  # kept by flush for the next round
        log.debug("replication activity not written yet: %s", exc.message)
