"""sessions: the status page's signed-in operators.

A row holds the SHA-256 of the session id (the id itself lives only in the operator's
cookie), the API key the session was opened with and that key's permissions, when it was
opened and when it was last seen (epoch milliseconds).  Replicas share the table, so a
session opened on one replica is valid on every other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from stigmem_node.store.db import Database


@dataclass(frozen=True)
class SessionRecord:
    id_hash: str
    key_id: str
    permissions: tuple[str, ...]
    created_ms: int
    seen_ms: int


class SessionRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(self, rec: SessionRecord) -> None:
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO sessions (id_hash, key_id, permissions, created_ms, seen_ms) VALUES (?, ?, ?, ?, ?)",
                (rec.id_hash, rec.key_id, json.dumps(list(rec.permissions)), rec.created_ms, rec.seen_ms),
            )

    def get(self, id_hash: str) -> SessionRecord | None:
        row = self.db.one("SELECT id_hash, key_id, permissions, created_ms, seen_ms FROM sessions WHERE id_hash = ?",
                          (id_hash,))
        if row is None:
            return None
        return SessionRecord(row[0], row[1], tuple(json.loads(row[2])), int(row[3]), int(row[4]))

    def touch(self, id_hash: str, seen_ms: int) -> None:
        with self.db.transaction():
            self.db.execute("UPDATE sessions SET seen_ms = ? WHERE id_hash = ?", (seen_ms, id_hash))

    def delete(self, id_hash: str) -> int:
        with self.db.transaction():
            return self.db.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))

    def prune(self, *, created_before_ms: int, seen_before_ms: int) -> int:
        """Delete sessions opened before ``created_before_ms`` or idle since before ``seen_before_ms``."""
        with self.db.transaction():
            return self.db.execute("DELETE FROM sessions WHERE created_ms < ? OR seen_ms < ?",
                                   (created_before_ms, seen_before_ms))
