"""node_meta and node_keys."""

from __future__ import annotations

from dataclasses import dataclass, field

from stigmem_node.store.db import Queryable


@dataclass(frozen=True)
class KeyRow:
    key_id: str
    public_key: str
    private_key: str = field(repr=False)  # never in a log line or traceback
    created_at: str
    status: str
    retire_after: str | None


class MetaRepo:
    def __init__(self, db: Queryable) -> None:
        self.db = db

    def get(self, key: str) -> str | None:
        row = self.db.one("SELECT value FROM node_meta WHERE key = ?", (key,))
        return row[0] if row else None

    def set(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO node_meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def delete(self, key: str) -> None:
        self.db.execute("DELETE FROM node_meta WHERE key = ?", (key,))

    def set_if_absent(self, key: str, value: str) -> str:
        """Insert unless present; return the stored value (first writer wins across processes)."""
        with self.db.transaction():
            self.db.execute("INSERT INTO node_meta (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING", (key, value))
            return self.get(key)  # type: ignore[return-value]

    def keys(self) -> list[KeyRow]:
        rows = self.db.all(
            "SELECT key_id, public_key, private_key, created_at, status, retire_after FROM node_keys "
            "ORDER BY created_at"
        )
        return [KeyRow(*r) for r in rows]

    def add_key(self, row: KeyRow) -> None:
        self.db.execute(
            "INSERT INTO node_keys (key_id, public_key, private_key, created_at, status, retire_after)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (row.key_id, row.public_key, row.private_key, row.created_at, row.status, row.retire_after),
        )

    def set_key_status(self, key_id: str, status: str, retire_after: str | None) -> None:
        self.db.execute(
            "UPDATE node_keys SET status = ?, retire_after = ? WHERE key_id = ?", (status, retire_after, key_id)
        )
