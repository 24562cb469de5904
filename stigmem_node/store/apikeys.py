"""api_keys."""

from __future__ import annotations

import json
from dataclasses import dataclass

from stigmem_node.store.db import Database

_COLS = "id, key_hash, pepper_version, permissions, label, created_at, expires_at, revoked_at, last_used_at"


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    key_hash: str
    pepper_version: int
    permissions: tuple[str, ...]
    label: str | None
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None


def _record(row: tuple) -> ApiKeyRecord:
    values = list(row)
    values[3] = tuple(json.loads(values[3]))
    return ApiKeyRecord(*values)


class ApiKeyRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(self, rec: ApiKeyRecord) -> None:
        self.db.execute(
            f"INSERT INTO api_keys ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rec.id, rec.key_hash, rec.pepper_version, json.dumps(list(rec.permissions)), rec.label,
             rec.created_at, rec.expires_at, rec.revoked_at, rec.last_used_at),
        )

    def get(self, key_id: str) -> ApiKeyRecord | None:
        row = self.db.one(f"SELECT {_COLS} FROM api_keys WHERE id = ?", (key_id,))
        return _record(row) if row else None

    def list_keys(self) -> list[ApiKeyRecord]:
        return [_record(r) for r in self.db.all(f"SELECT {_COLS} FROM api_keys ORDER BY created_at, id")]

    def count(self) -> int:
        row = self.db.one("SELECT COUNT(*) FROM api_keys")
        return int(row[0]) if row else 0

    def revoke(self, key_id: str, when: str) -> bool:
        return self.db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                               (when, key_id)) == 1

    def touch(self, key_id: str, when: str) -> None:
        self.db.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (when, key_id))

    def touch_many(self, items: dict[str, str]) -> None:
        """Set ``last_used_at`` of many keys (key id -> time) in one transaction."""
        with self.db.transaction():
            for key_id, when in items.items():
                self.touch(key_id, when)
