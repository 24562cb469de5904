"""Background upkeep of a serving node's database, off the event loop.

Once a second, on a connection of its own: delete expired nonces (up to a batch, walking
the expiry index) and move WAL pages into the database file (a PASSIVE checkpoint, which
never blocks readers or writers).  The serving connection's auto-checkpoint is turned
off, so its commits never wait for a checkpoint and its fsync.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from stigmem_node.store.db import Database, StorageBusy
from stigmem_node.store.nonces import NonceRepo

log = logging.getLogger("stigmem_node.store")


class Maintenance:
    def __init__(self, db: Database, now_ms: Callable[[], int], interval_s: float = 1.0,
                 prune_batch: int = 20_000) -> None:
        self.path = db.path
        self.now_ms = now_ms
        self.interval_s = interval_s
        self.prune_batch = prune_batch
        self._stop = threading.Event()
        db.execute("PRAGMA wal_autocheckpoint=0")
        self._thread = threading.Thread(target=self._run, name="stigmem-maintenance", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            db = Database(self.path)
        except Exception:
            log.exception("database maintenance cannot start: expired nonces will not be pruned")
            return
        nonces = NonceRepo(db)
        try:
            while not self._stop.wait(self.interval_s):
                try:
                    nonces.prune(self.now_ms(), batch=self.prune_batch)
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except StorageBusy as exc:  # the next round tries again
                    log.debug("maintenance deferred: %s", exc.message)
                except Exception:  # keep the thread alive: an unpruned cache only grows
                    log.exception("database maintenance failed; trying again in %.0f s", self.interval_s)
        finally:
            db.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
