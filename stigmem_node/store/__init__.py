"""Storage: the only package that speaks SQL.

``Store`` bundles one ``Database`` (a SQLite file in WAL mode) with a repository per
table family.  The layers above call repository methods and ``store.transaction()``;
they never see SQL, so another engine can slot in behind the same methods.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path

from stigmem_node.store.apikeys import ApiKeyRepo
from stigmem_node.store.audit import AuditRepo
from stigmem_node.store.db import Database, IntegrityConflict
from stigmem_node.store.facts import FactRepo
from stigmem_node.store.meta import MetaRepo
from stigmem_node.store.nonces import NonceRepo
from stigmem_node.store.peers import PeerRepo
from stigmem_node.store.replication import ReplicationRepo

__all__ = ["Database", "IntegrityConflict", "Store"]


class Store:
    def __init__(self, path: Path | str, synchronous: str = "NORMAL", *, create: bool = True,
                 busy_timeout_ms: int = 10_000) -> None:
        self.db = Database(path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms, create=create)
        self.meta = MetaRepo(self.db)
        self.peers = PeerRepo(self.db)
        self.audit = AuditRepo(self.db)
        self.apikeys = ApiKeyRepo(self.db)
        self.nonces = NonceRepo(self.db)
        self.facts = FactRepo(self.db)
        self.replication = ReplicationRepo(self.db)

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self.db.transaction()

    def ping(self) -> None:
        """A trivial read; raises ``StorageUnavailable`` (or ``StorageBusy``) on failure."""
        self.db.ping()

    def close(self) -> None:
        self.db.close()
