"""peers and peer_keys."""

from __future__ import annotations

import json
from dataclasses import dataclass

from stigmem_node.store.db import ConstraintViolation, Database, IntegrityConflict

_COLS = (
    "id, node_id, node_url, federation_pubkey, allowed_scopes, declaration, signed_at, status, reject_reason,"
    " created_at, approved_at, approved_by, updated_at"
)


@dataclass(frozen=True)
class PeerRecord:
    id: str
    node_id: str
    node_url: str
    federation_pubkey: str
    allowed_scopes: tuple[str, ...]
    declaration: dict
    signed_at: str
    status: str
    reject_reason: str | None
    created_at: str
    approved_at: str | None
    approved_by: str | None
    updated_at: str


@dataclass(frozen=True)
class PeerKey:
    key_id: str
    public_key: str
    added_at: str
    retire_after: str | None


def _record(row: tuple) -> PeerRecord:
    values = list(row)
    values[4] = tuple(json.loads(values[4]))
    values[5] = json.loads(values[5])
    return PeerRecord(*values)


class PeerRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(self, peer: PeerRecord, keys: list[PeerKey]) -> None:
        try:
            with self.db.transaction():
                self.db.execute(
                    f"INSERT INTO peers ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        peer.id, peer.node_id, peer.node_url, peer.federation_pubkey,
                        json.dumps(sorted(peer.allowed_scopes)), json.dumps(peer.declaration, sort_keys=True),
                        peer.signed_at, peer.status, peer.reject_reason, peer.created_at, peer.approved_at,
                        peer.approved_by, peer.updated_at,
                    ),
                )
                for key in keys:
                    self.add_key(peer.id, key)
        except ConstraintViolation as exc:
            raise IntegrityConflict("peer_already_registered",
                                    "a peer with this node id is already registered") from exc

    def add_key(self, peer_id: str, key: PeerKey) -> None:
        self.db.execute(
            "INSERT INTO peer_keys (peer_id, key_id, public_key, added_at, retire_after) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (peer_id, key.key_id, key.public_key, key.added_at, key.retire_after),
        )

    def keys(self, peer_id: str) -> list[PeerKey]:
        rows = self.db.all(
            "SELECT key_id, public_key, added_at, retire_after FROM peer_keys WHERE peer_id = ? ORDER BY added_at",
            (peer_id,),
        )
        return [PeerKey(*r) for r in rows]

    def get(self, peer_id: str) -> PeerRecord | None:
        row = self.db.one(f"SELECT {_COLS} FROM peers WHERE id = ?", (peer_id,))
        return _record(row) if row else None

    def by_node_id(self, node_id: str) -> PeerRecord | None:
        row = self.db.one(f"SELECT {_COLS} FROM peers WHERE node_id = ?", (node_id,))
        return _record(row) if row else None

    def list_peers(self, status: str | None = None) -> list[PeerRecord]:
        if status:
            rows = self.db.all(f"SELECT {_COLS} FROM peers WHERE status = ? ORDER BY created_at, id", (status,))
        else:
            rows = self.db.all(f"SELECT {_COLS} FROM peers ORDER BY created_at, id")
        return [_record(r) for r in rows]

    def set_status(
        self, peer_id: str, *, expected: tuple[str, ...], status: str, updated_at: str,
        approved_at: str | None = None, approved_by: str | None = None,
    ) -> bool:
        """Compare-and-set the status; False if the peer was not in an expected status."""
        marks = ",".join("?" * len(expected))
        return self.db.execute(
            f"UPDATE peers SET status = ?, updated_at = ?, approved_at = COALESCE(?, approved_at),"
            f" approved_by = COALESCE(?, approved_by) WHERE id = ? AND status IN ({marks})",
            (status, updated_at, approved_at, approved_by, peer_id, *expected),
        ) == 1

    def set_pubkey(self, peer_id: str, public_key: str, updated_at: str) -> None:
        self.db.execute("UPDATE peers SET federation_pubkey = ?, updated_at = ? WHERE id = ?",
                        (public_key, updated_at, peer_id))

    def retire_key(self, peer_id: str, key_id: str, retire_after: str) -> None:
        self.db.execute(
            "UPDATE peer_keys SET retire_after = ? WHERE peer_id = ? AND key_id = ?"
            " AND (retire_after IS NULL OR retire_after > ?)",
            (retire_after, peer_id, key_id, retire_after),
        )

    def auth_rows(self, node_id: str) -> list[tuple]:
        """(peer_id, status, allowed_scopes JSON, key_id, public_key, retire_after) for every key
        of the peer ``node_id``.

        One indexed query, read fresh on every call so that a status change made by any
        process (the CLI, another server) takes effect at once.
        """
        return self.db.all(
            "SELECT p.id, p.status, p.allowed_scopes, k.key_id, k.public_key, k.retire_after FROM peers p"
            " LEFT JOIN peer_keys k ON k.peer_id = p.id WHERE p.node_id = ?",
            (node_id,),
        )

    def delete(self, peer_id: str, *, expected: tuple[str, ...]) -> bool:
        marks = ",".join("?" * len(expected))
        return self.db.execute(f"DELETE FROM peers WHERE id = ? AND status IN ({marks})", (peer_id, *expected)) == 1

