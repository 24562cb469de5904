"""tombstones: what remains of erased facts and entities, append-only, commit-ordered by seq.

``scopes`` is the sorted JSON array of the scopes the tombstone covers (a fact tombstone:
the erased fact's scope; an entity tombstone: the scopes of this node's own erased facts of
the entity), so that a peer is served only tombstones of what it may have received.
``origin_sig`` is NULL for a local tombstone (a received fact erased here), which is never
served; ``received_from`` is the peer a tombstone came from (NULL: made here).

``erased_facts`` holds the ids (only the ids) of the facts an entity tombstone erased, with
that tombstone's seq, so that an id erased with its entity is known as erased, as one erased
by its own fact tombstone is.  The facts guard refuses to delete a fact row under an entity
tombstone whose id is not recorded there first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stigmem_node.store.db import Database

COLS = "seq, kind, fact_id, entity, cid, scopes, erased_at, origin_node_id, reason, origin_sig, received_from"


@dataclass(frozen=True)
class TombstoneRow:
    seq: int
    kind: str
    fact_id: str | None
    entity: str | None
    cid: str | None
    scopes: str  # sorted JSON array
    erased_at: str
    origin_node_id: str
    reason: str
    origin_sig: str | None
    received_from: str | None


class TombstoneRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(self, *, kind: str, fact_id: str | None, entity: str | None, cid: str | None, scopes: str,
               erased_at: str, origin_node_id: str, reason: str, origin_sig: str | None,
               received_from: str | None) -> int:
        """Insert one tombstone (call inside the erasing transaction); its seq."""
        row = self.db.returning(
            "INSERT INTO tombstones (kind, fact_id, entity, cid, scopes, erased_at, origin_node_id, reason,"
            " origin_sig, received_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            (kind, fact_id, entity, cid, scopes, erased_at, origin_node_id, reason, origin_sig, received_from))
        return int(row[0])

    def of_fact(self, fact_id: str) -> TombstoneRow | None:
        """The first tombstone of this fact id."""
        row = self.db.one(f"SELECT {COLS} FROM tombstones WHERE kind = 'fact' AND fact_id = ? ORDER BY seq LIMIT 1",
                          (fact_id,))
        return TombstoneRow(*row) if row else None

    def of_entity(self, entity: str) -> list[TombstoneRow]:
        """Every tombstone of this entity, oldest first."""
        rows = self.db.all(f"SELECT {COLS} FROM tombstones WHERE kind = 'entity' AND entity = ? ORDER BY seq",
                           (entity,))
        return [TombstoneRow(*r) for r in rows]

    def record_erased(self, tombstone_seq: int, fact_ids: Sequence[str]) -> None:
        """Record the ids of the facts the entity tombstone ``tombstone_seq`` erases (call in
        the erasing transaction, before deleting their rows).  An id recorded before stays
        with its first tombstone."""
        self.db.executemany("INSERT INTO erased_facts (fact_id, tombstone_seq) VALUES (?, ?)"
                            " ON CONFLICT (fact_id) DO NOTHING", [(f, tombstone_seq) for f in fact_ids])

    def erasing(self, fact_id: str) -> TombstoneRow | None:
        """The tombstone that erased this fact id: its own fact tombstone, or the entity
        tombstone that recorded it."""
        row = self.db.one(
            f"SELECT {COLS} FROM tombstones WHERE kind = 'fact' AND fact_id = ?"
            f" UNION ALL SELECT {', '.join('t.' + c.strip() for c in COLS.split(','))} FROM erased_facts e"
            " JOIN tombstones t ON t.seq = e.tombstone_seq WHERE e.fact_id = ? ORDER BY 1 LIMIT 1",
            (fact_id, fact_id))
        return TombstoneRow(*row) if row else None

    def erased(self, fact_id: str) -> bool:
        """Whether this fact id was erased: by its own fact tombstone, or with its entity."""
        return self.db.one(
            "SELECT 1 FROM tombstones WHERE kind = 'fact' AND fact_id = ?"
            " UNION ALL SELECT 1 FROM erased_facts WHERE fact_id = ? LIMIT 1", (fact_id, fact_id)) is not None

    def erased_ids(self, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` that were erased: by a fact tombstone, or with their entity."""
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        return {r[0] for r in self.db.all(
            f"SELECT fact_id FROM tombstones WHERE kind = 'fact' AND fact_id IN ({marks})"
            f" UNION SELECT fact_id FROM erased_facts WHERE fact_id IN ({marks})", (*ids, *ids))}

    def entities_erased_at(self, entities: Sequence[str]) -> dict[str, str]:
        """entity -> the latest ``erased_at`` of its entity tombstones, for those that have one."""
        if not entities:
            return {}
        marks = ",".join("?" * len(entities))
        return dict(self.db.all(
            f"SELECT entity, MAX(erased_at) FROM tombstones WHERE kind = 'entity' AND entity IN ({marks})"
            " GROUP BY entity", tuple(entities)))

    def page_for_peer(self, origin_node_id: str, scopes: Sequence[str], after: int,
                      limit: int) -> list[TombstoneRow]:
        """This node's own signed tombstones that cover one of ``scopes``, by seq."""
        if not scopes:
            return []
        covers = " OR ".join("scopes LIKE ?" for _ in scopes)
        rows = self.db.all(
            f"SELECT {COLS} FROM tombstones WHERE seq > ? AND origin_node_id = ? AND received_from IS NULL"
            f" AND origin_sig IS NOT NULL AND ({covers}) ORDER BY seq LIMIT ?",
            (after, origin_node_id, *[f'%"{s}"%' for s in scopes], limit))
        return [TombstoneRow(*r) for r in rows]

    def own_signed(self, origin_node_id: str, after: int, limit: int) -> list[TombstoneRow]:
        """This node's own signed tombstones, by seq (for re-signing after a key rotation)."""
        rows = self.db.all(
            f"SELECT {COLS} FROM tombstones WHERE seq > ? AND origin_node_id = ? AND received_from IS NULL"
            " AND origin_sig IS NOT NULL ORDER BY seq LIMIT ?", (after, origin_node_id, limit))
        return [TombstoneRow(*r) for r in rows]

    def set_signatures(self, rows: Sequence[tuple[str, int]]) -> None:
        """(origin_sig, seq) rows: renew signatures only (the rest is immutable)."""
        self.db.executemany("UPDATE tombstones SET origin_sig = ? WHERE seq = ?", rows)

    def count(self) -> int:
        row = self.db.one("SELECT COUNT(*) FROM tombstones")
        return int(row[0]) if row else 0
