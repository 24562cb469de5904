"""Storage: the only package that speaks SQL.

``Store`` bundles one database (``store.sqlite``: a SQLite file in WAL mode, the default;
or ``store.postgres``: a PostgreSQL database shared by replicas) with a repository per
table family.  The layers above call repository methods and ``store.transaction()``; they
never see SQL or a driver.  ``store.db`` describes what both engines offer.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from stigmem_node.store.activity import ActivityRepo
from stigmem_node.store.apikeys import ApiKeyRepo
from stigmem_node.store.audit import AuditRepo
from stigmem_node.store.db import (
    ConstraintViolation,
    Database,
    IntegrityConflict,
    StorageBusy,
    StorageError,
    StorageUnavailable,
    is_postgres_url,
)
from stigmem_node.store.facts import FactRepo
from stigmem_node.store.meta import MetaRepo
from stigmem_node.store.nonces import NonceRepo
from stigmem_node.store.peers import PeerRepo
from stigmem_node.store.replication import ReplicationRepo
from stigmem_node.store.sessions import SessionRepo
from stigmem_node.store.tombstones import TombstoneRepo

__all__ = ["ConstraintViolation", "Database", "IntegrityConflict", "StorageBusy", "StorageError",
           "StorageUnavailable", "Store", "open_database"]


def open_database(target: Path | str, synchronous: str = "NORMAL", *, create: bool = True,
                  busy_timeout_ms: int = 10_000, pool_size: int = 20) -> Database:
    """The database at ``target``: a ``postgresql://`` URL (``pool_size`` connections at
    most), or else a SQLite file path."""
    if is_postgres_url(target):
        from stigmem_node.store.postgres import PostgresDatabase

        return PostgresDatabase(str(target), busy_timeout_ms, create=create, pool_size=pool_size)
    from stigmem_node.store.sqlite import SqliteDatabase

    return SqliteDatabase(target, synchronous, busy_timeout_ms, create=create)


class Store:
    def __init__(self, target: Path | str, synchronous: str = "NORMAL", *, create: bool = True,
                 busy_timeout_ms: int = 10_000, pool_size: int = 20) -> None:
        self.db = open_database(target, synchronous, create=create, busy_timeout_ms=busy_timeout_ms,
                                pool_size=pool_size)
        self.meta = MetaRepo(self.db)
        self.peers = PeerRepo(self.db)
        self.audit = AuditRepo(self.db)
        self.apikeys = ApiKeyRepo(self.db)
        self.nonces = NonceRepo(self.db)
        self.facts = FactRepo(self.db)
        self.replication = ReplicationRepo(self.db)
        self.tombstones = TombstoneRepo(self.db)
        self.activity = ActivityRepo(self.db)
        self.sessions = SessionRepo(self.db)

    @property
    def engine(self) -> str:
        return self.db.engine

    def transaction(self) -> AbstractContextManager[object]:
        return self.db.transaction()

    def ping(self) -> None:
        """A trivial read; raises ``StorageUnavailable`` (or another storage error) if the
        database does not answer."""
        self.db.ping()

    def close(self) -> None:
        self.db.close()
