"""Whole tables, row by row, for moving a node to another database (``stigmem_node.migrate``).

Storage offers the pieces (the tables in an order that keeps every reference valid, their
rows, the insert of rows as they are, the seq counters); the use case orders them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from stigmem_node.store.db import Database, Queryable

# Every table, parents before children, with its columns.  seq columns are copied as they
# are, so cursors that peers hold and the audit chain stay valid.
TABLES: dict[str, tuple[str, ...]] = {
    "node_meta": ("key", "value"),
    "node_keys": ("key_id", "public_key", "private_key", "created_at", "status", "retire_after"),
    "peers": ("id", "node_id", "node_url", "federation_pubkey", "allowed_scopes", "declaration", "signed_at",
              "status", "reject_reason", "created_at", "approved_at", "approved_by", "updated_at"),
    "peer_keys": ("peer_id", "key_id", "public_key", "added_at", "retire_after"),
    "nonce_cache": ("nonce", "peer_id", "expires_at_ms"),
    "facts": ("seq", "id", "cid", "entity", "relation", "value_type", "value_v", "interpret_as", "source",
              "timestamp", "hlc", "valid_until", "confidence", "scope", "origin_node_id", "origin_sig", "entry",
              "received_from", "received_at"),
    "tombstones": ("seq", "kind", "fact_id", "entity", "cid", "scopes", "erased_at", "origin_node_id", "reason",
                   "origin_sig", "received_from"),
    "erased_facts": ("fact_id", "tombstone_seq"),
    "replication_state": ("peer_id", "cursor", "last_attempt_at", "last_success_at", "last_error",
                          "facts_ingested", "facts_rejected", "tombstone_cursor", "consecutive_failures"),
    "peer_pulls": ("peer_id", "last_pull_at", "cursor_seq", "facts_served", "token_skew_ms"),
    "fact_traffic": ("minute", "direction", "facts"),
    "audit_log": ("seq", "ts", "event_type", "peer_id", "actor", "reason", "detail", "remote_addr", "prev_hash",
                  "hash"),
    "api_keys": ("id", "key_hash", "pepper_version", "permissions", "label", "created_at", "expires_at",
                 "revoked_at", "last_used_at"),
}
_ORDER = {"facts": "seq", "tombstones": "seq", "audit_log": "seq"}


def rows(db: Queryable, table: str, batch: int = 2000) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of ``table`` in batches (by seq where there is one)."""
    cols = ", ".join(TABLES[table])
    order = _ORDER.get(table)
    if order is None:
        found = db.all(f"SELECT {cols} FROM {table}")
        for i in range(0, len(found), batch):
            yield found[i:i + batch]
        return
    after = -1
    while chunk := db.all(f"SELECT {cols} FROM {table} WHERE {order} > ? ORDER BY {order} LIMIT ?",
                          (after, batch)):
        yield chunk
        after = chunk[-1][0]


def count(db: Queryable, table: str) -> int:
    row = db.one(f"SELECT COUNT(*) FROM {table}")
    return int(row[0]) if row else 0


def insert(db: Database, table: str, chunk: Sequence[Sequence[Any]]) -> None:
    """Insert rows as they are (call inside a transaction)."""
    cols = TABLES[table]
    marks = ", ".join("?" * len(cols))
    db.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", chunk)


def set_seq_issued(db: Database, table: str, issued: int) -> None:
    """Make the next seq drawn for ``table`` follow ``issued`` (PostgreSQL's sequences;
    SQLite's sqlite_sequence), so a deleted newest row still shows as a gap."""
    if issued <= 0:
        return
    if db.engine == "postgresql":
        db.one("SELECT setval(?, ?)", (f"{table}_seq", issued))
    else:
        db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (issued, table))


def seq_issued(db: Queryable, table: str) -> int:
    """The largest seq ever drawn for ``table`` (facts or audit_log)."""
    if db.engine == "postgresql":
        row = db.one(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {table}_seq")
    else:
        row = db.one("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
    return int(row[0]) if row and row[0] is not None else 0
