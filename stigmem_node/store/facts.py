"""facts: append-only rows, commit-ordered by seq."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stigmem_node.store.db import Database

INSERT_COLS = (
    "id, cid, entity, relation, value_type, value_v, interpret_as, source, timestamp, hlc, valid_until,"
    " confidence, scope, origin_node_id, origin_sig, entry, received_from, received_at"
)
ROW_COLS = "seq, " + INSERT_COLS
LOOKUP_CHUNK = 500  # CIDs per query of ``local_by_contents`` (well under every engine's parameter limit)


@dataclass(frozen=True)
class FactRow:
    seq: int
    id: str
    cid: str
    entity: str
    relation: str
    value_type: str
    value_v: str
    interpret_as: str
    source: str
    timestamp: str
    hlc: str
    valid_until: str | None
    confidence: float
    scope: str
    origin_node_id: str
    origin_sig: str | None
    entry: str  # the pull-page entry, JSON text
    received_from: str | None
    received_at: str | None


def _filters(live_at: str | None, **equal: str | None) -> tuple[str, list[Any]]:
    """The listing's WHERE terms (each starting with AND) and their parameters."""
    where, params = "", []
    for column, value in equal.items():
        if value is not None:
            where += f" AND {column} = ?"
            params.append(value)
    if live_at is not None:
        where += " AND (valid_until IS NULL OR valid_until > ?)"
        params.append(live_at)
    return where, params


def _served(scopes: Sequence[str], after: int, now_iso: str, instructions: bool) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause (and its parameters) of the facts served to a peer reading ``scopes``
    after seq ``after``: this node's own, unexpired, instructions only if ``instructions``."""
    marks = ",".join("?" * len(scopes))
    no_instructions = ("" if instructions else
                       " AND interpret_as = 'content' AND substr(entity, 1, 12) <> 'instruction:'"
                       " AND substr(relation, 1, 12) <> 'instruction:'")
    return (f"seq > ? AND received_from IS NULL AND scope IN ({marks})"
            f" AND (valid_until IS NULL OR valid_until > ?){no_instructions}", (after, *scopes, now_iso))


class FactRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert_many(self, rows: Sequence[tuple]) -> None:
        """Insert rows in ``INSERT_COLS`` order (call inside a transaction for one commit)."""
        self.db.executemany(
            f"INSERT INTO facts ({INSERT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
        )

    def insert_new(self, rows: Sequence[tuple]) -> dict[str, int]:
        """``insert_many``, then each row's id -> its seq.  Call inside a transaction.

        On SQLite the seqs are known without reading them back: every seq is larger than
        any before it (AUTOINCREMENT), so if the first row's seq is the last insert's rowid
        minus the rows' count, the rows hold exactly that run of consecutive numbers; one
        lookup of the first row proves it.  Otherwise (PostgreSQL) the seqs are read back."""
        self.insert_many(rows)
        query = self.db.dialect.last_insert_seq
        if query is not None and rows:
            last = self.db.one(query)
            first = self.db.one("SELECT seq FROM facts WHERE id = ?", (rows[0][0],))
            if last is not None and first is not None and first[0] == last[0] - len(rows) + 1:
                return {row[0]: first[0] + k for k, row in enumerate(rows)}
        return self.seqs_of([row[0] for row in rows])

    def seqs_of(self, ids: Sequence[str]) -> dict[str, int]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        return dict(self.db.all(f"SELECT id, seq FROM facts WHERE id IN ({marks})", tuple(ids)))

    def known(self, ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """id -> (cid, valid_until) for the ids already stored."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.db.all(f"SELECT id, cid, valid_until FROM facts WHERE id IN ({marks})", tuple(ids))
        return {r[0]: (r[1], r[2]) for r in rows}

    def local_by_contents(self, contents: Sequence[tuple[str, str, str, str | None]],
                          ) -> dict[tuple[str, str | None], FactRow]:
        """This node's own facts with these contents, given as (entity, relation, CID,
        valid_until): by (CID, valid_until) (the CID leaves out valid_until), the first stored
        of each pair found, by seq.  One query per ``LOOKUP_CHUNK`` contents, on the content
        index (entity, relation, cid)."""
        wanted = {(cid, until) for _, _, cid, until in contents}
        triples = sorted({(entity, relation, cid) for entity, relation, cid, _ in contents})
        found: dict[tuple[str, str | None], FactRow] = {}
        cols = ", ".join(f"f.{c.strip()}" for c in ROW_COLS.split(","))
        for start in range(0, len(triples), LOOKUP_CHUNK):
            chunk = triples[start:start + LOOKUP_CHUNK]
            rows = self.db.all(
                f"WITH wanted (entity, relation, cid) AS (VALUES {','.join(['(?, ?, ?)'] * len(chunk))})"
                f" SELECT {cols} FROM wanted JOIN facts f ON f.entity = wanted.entity"
                " AND f.relation = wanted.relation AND f.cid = wanted.cid"
                " WHERE f.received_from IS NULL ORDER BY f.seq", tuple(v for t in chunk for v in t))
            for row in rows:
                fact = FactRow(*row)
                key = (fact.cid, fact.valid_until)
                if key in wanted and key not in found:
                    found[key] = fact
        return found

    def get(self, fact_id: str) -> FactRow | None:
        row = self.db.one(f"SELECT {ROW_COLS} FROM facts WHERE id = ?", (fact_id,))
        return FactRow(*row) if row else None

    def query(self, *, after: int = 0, limit: int = 100, live_at: str | None = None, entity: str | None = None,
              relation: str | None = None, scope: str | None = None, source: str | None = None) -> list[FactRow]:
        """Facts after seq ``after`` matching the filters, by seq; with ``live_at`` (an
        ``expiry_key`` time), only those unexpired then."""
        where, params = _filters(live_at, entity=entity, relation=relation, scope=scope, source=source)
        rows = self.db.all(
            f"SELECT {ROW_COLS} FROM facts WHERE seq > ?{where} ORDER BY seq LIMIT ?", (after, *params, limit)
        )
        return [FactRow(*r) for r in rows]

    def count_matching(self, *, live_at: str | None = None, entity: str | None = None, relation: str | None = None,
                       scope: str | None = None, source: str | None = None) -> int:
        """How many facts ``query`` would return from the start without a limit: one COUNT
        over the same WHERE (its cost is the rows the filters' index leaves to check)."""
        where, params = _filters(live_at, entity=entity, relation=relation, scope=scope, source=source)
        row = self.db.one(f"SELECT COUNT(*) FROM facts WHERE 1 = 1{where}", params)
        return int(row[0]) if row else 0

    def page_for_peer(self, scopes: Sequence[str], after: int, limit: int, now_iso: str, *,
                      instructions: bool = False, max_chars: int | None = None,
                      ) -> tuple[list[tuple[int, str, str]], bool]:
        """(seq, entry, hlc) of this node's own unexpired facts in ``scopes``, by seq, and
        whether the rows were cut short by ``max_chars``.

        Instruction facts (``interpret_as`` instruction, or an ``instruction:`` entity or
        relation) are left out unless ``instructions`` is true.  With ``max_chars``, rows
        are read one by one and the page stops before the entries would exceed it (one
        row at least), so a page of large facts never sits in memory whole.
        """
        where, params = _served(scopes, after, now_iso, instructions)
        sql = f"SELECT seq, entry, hlc FROM facts WHERE {where} ORDER BY seq LIMIT ?"
        params = (*params, limit)
        if max_chars is None:
            return self.db.all(sql, params), False
        rows: list[tuple[int, str, str]] = []
        size = 0
        found = self.db.iterate(sql, params)
        try:
            for row in found:
                size += len(row[1])
                if rows and size > max_chars:
                    return rows, True
                rows.append(row)  # type: ignore[arg-type]
        finally:
            found.close()
        return rows, False

    def count_for_peer(self, scopes: Sequence[str], after: int, now_iso: str, *, instructions: bool = False) -> int:
        """How many facts ``page_for_peer`` would still serve after seq ``after`` (a range of
        the primary key: the cost is the facts counted)."""
        where, params = _served(scopes, after, now_iso, instructions)
        row = self.db.one(f"SELECT COUNT(*) FROM facts WHERE {where}", params)
        return int(row[0]) if row else 0

    def count_by_origin(self) -> tuple[int, int]:
        """(this node's own facts, facts received from peers): one pass over the table."""
        row = self.db.one("SELECT COUNT(*), COUNT(received_from) FROM facts")
        return (int(row[0]) - int(row[1]), int(row[1])) if row else (0, 0)

    def local_entries(self, after: int, limit: int) -> list[tuple[int, str]]:
        """(seq, entry) of this node's own facts, by seq (for re-signing after a key rotation)."""
        return self.db.all("SELECT seq, entry FROM facts WHERE seq > ? AND received_from IS NULL ORDER BY seq LIMIT ?",
                           (after, limit))

    def set_signatures(self, rows: Sequence[tuple[str, str, int]]) -> None:
        """(origin_sig, entry, seq) rows: renew signatures only (the content is immutable)."""
        self.db.executemany("UPDATE facts SET origin_sig = ?, entry = ? WHERE seq = ?", rows)

    def of_entity(self, entity: str) -> list[tuple[str, str, str, str | None]]:
        """(id, cid, scope, received_from) of every stored fact of ``entity``, by seq."""
        return self.db.all("SELECT id, cid, scope, received_from FROM facts WHERE entity = ? ORDER BY seq", (entity,))

    def erase(self, fact_id: str) -> int:
        """Delete the fact's row (its content and stored entry): the schema's guard allows it
        only once a tombstone for it exists (call in the erasing transaction)."""
        return self.db.execute("DELETE FROM facts WHERE id = ?", (fact_id,))

    def erase_entity(self, entity: str) -> int:
        """Delete every fact row of ``entity`` (guarded as ``erase``); how many."""
        return self.db.execute("DELETE FROM facts WHERE entity = ?", (entity,))

    def of_entity_from(self, entity: str, origin_node_id: str, until: str) -> list[tuple[str, str]]:
        """(id, cid) of the stored facts of ``entity`` from ``origin_node_id`` whose timestamp
        is at or before ``until`` (what an origin's entity tombstone erases)."""
        rows = self.db.all("SELECT id, cid, timestamp FROM facts WHERE entity = ? AND origin_node_id = ? ORDER BY seq",
                           (entity, origin_node_id))
        return [(r[0], r[1]) for r in rows if _not_after(r[2], until)]

    def max_local_hlc(self) -> str | None:
        """The newest HLC this node issued (received facts carry their origin's clock)."""
        row = self.db.one("SELECT MAX(hlc) FROM facts WHERE received_from IS NULL")
        return row[0] if row else None

    def head_seq(self) -> int:
        """The largest ``seq`` (0 when there is no fact): commit-ordered, so a fact
        committed after this read has a larger one."""
        row = self.db.one("SELECT MAX(seq) FROM facts")
        return int(row[0]) if row and row[0] is not None else 0

    def count(self) -> int:
        row = self.db.one("SELECT COUNT(*) FROM facts")
        return int(row[0]) if row else 0


def _not_after(timestamp: str, until: str) -> bool:
    """``timestamp`` at or before ``until`` (RFC 3339 UTC texts of one form compare as times;
    a timestamp that does not parse counts as covered)."""
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00")) <= datetime.fromisoformat(
            until.replace("Z", "+00:00"))
    except ValueError:
        return True
