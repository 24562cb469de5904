"""PostgreSQL's named leases (``Database.try_lock``): session advisory locks, all held on
one connection of this process's own.

A subscriber that follows a peer (a long-poll) holds that peer's pull lease while it
waits, for as long as it follows it.  Were each lease a pooled connection kept aside, a
node following many peers would drain the pool that serves its requests; on one
connection, a thousand leases cost one backend.

The server releases every lock of a session whose connection ends, so a replica that dies
never keeps a lease.  If this connection breaks, every lease of the process is gone at
once: another replica may then pull a peer whose pull here is still under way.  Nothing
is lost or doubled by that: storing a page moves the peer's cursor by compare-and-set
(``ReplicationRepo.advance``), and the later of two pullers stops at the first page the
other already stored.

A session may take the same advisory lock twice (locks stack), so the names held by this
process are also kept here: a second ``try_lock`` of a held name is refused in process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("stigmem_node.store.postgres")

_LOCK = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended(%s, 0))"


class Lease:
    def __init__(self, leases: Leases, name: str) -> None:
        self._leases: Leases | None = leases
        self.name = name

    def release(self) -> None:
        leases, self._leases = self._leases, None
        if leases is not None:
            leases.release(self.name)


class Leases:
    def __init__(self, connect: Callable[[], Any], errors: tuple[type[Exception], ...],
                 translate: Callable[[Exception], Exception]) -> None:
        """``connect``: a new autocommit connection; ``errors``: the driver's errors, which
        ``translate`` turns into storage errors."""
        self._connect = connect
        self._errors = errors
        self._translate = translate
        self._lock = threading.Lock()
        self._conn: Any = None
        self._held: set[str] = set()

    def try_lock(self, name: str) -> Lease | None:
        with self._lock:
            if name in self._held:
                return None
            try:
                if self._conn is None or self._conn.closed:
                    self._held.clear()  # a new session holds nothing
                    self._conn = self._connect()
                row = self._conn.execute(_LOCK, (name,)).fetchone()
            except self._errors as exc:
                self._drop()
                raise self._translate(exc) from None
            if not (row and row[0]):
                return None
            self._held.add(name)
            return Lease(self, name)

    def release(self, name: str) -> None:
        with self._lock:
            if name not in self._held:
                return  # the session that held it is gone, and the lock with it
            self._held.discard(name)
            try:
                self._conn.execute(_UNLOCK, (name,))
            except self._errors:
                log.warning("could not release the lease %s; closing the lease connection releases it", name)
                self._drop()

    def _drop(self) -> None:
        """Close the lease connection: the server releases every lease it held."""
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            try:
                conn.close()
            except self._errors:
                log.debug("the lease connection was already broken")

    def close(self) -> None:
        with self._lock:
            self._drop()
