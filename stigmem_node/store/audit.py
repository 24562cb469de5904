"""audit_log: append (inside the caller's transaction) and read back in seq order."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from stigmem_node.store.db import Queryable

_COLS = "seq, ts, event_type, peer_id, actor, reason, detail, remote_addr, prev_hash, hash"
# For listing: every text column read as hex and decoded leniently, so that a tampered row
# (a BLOB, a number, text that is not UTF-8) is shown as it is instead of failing the read.
# ``audit verify`` reads the raw values (``iter_all``) and reports such rows as broken.
_TEXT_COLS = ("ts", "event_type", "peer_id", "actor", "reason", "detail", "remote_addr", "prev_hash", "hash")


def _display_row(row: tuple) -> AuditRow:
    values = [None if row[i + 1] else bytes.fromhex(row[i]).decode("utf-8", "replace")
              for i in range(1, 2 * len(_TEXT_COLS), 2)]
    return AuditRow(int(row[0]), *values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class AuditRow:
    seq: int
    ts: str
    event_type: str
    peer_id: str | None
    actor: str | None
    reason: str | None
    detail: str
    remote_addr: str | None
    prev_hash: str
    hash: str


class AuditRepo:
    def __init__(self, db: Queryable) -> None:
        self.db = db
        hex_text = db.dialect.hex_text
        self._display_cols = "seq, " + ", ".join(f"{hex_text.format(c)}, {c} IS NULL" for c in _TEXT_COLS)

    def head(self) -> tuple[int, str, str] | None:
        """(seq, hash, event_type) of the newest row."""
        row = self.db.one("SELECT seq, hash, event_type FROM audit_log ORDER BY seq DESC LIMIT 1")
        return (row[0], row[1], row[2]) if row else None

    def last_seq_of(self, event_type: str) -> int:
        """The seq of the newest row of ``event_type``, 0 if none (index audit_log_event)."""
        row = self.db.one("SELECT MAX(seq) FROM audit_log WHERE event_type = ?", (event_type,))
        return int(row[0]) if row and row[0] is not None else 0

    def ts_after(self, seq: int) -> str | None:
        """The ts of the first row after ``seq``."""
        row = self.db.one("SELECT ts FROM audit_log WHERE seq > ? ORDER BY seq LIMIT 1", (seq,))
        return row[0] if row else None

    def by_seq(self, seq: int) -> AuditRow | None:
        row = self.db.one(f"SELECT {_COLS} FROM audit_log WHERE seq = ?", (seq,))
        return AuditRow(*row) if row else None

    def insert(self, row: AuditRow) -> int:
        (seq,) = self.db.returning(
            "INSERT INTO audit_log (ts, event_type, peer_id, actor, reason, detail, remote_addr, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            (row.ts, row.event_type, row.peer_id, row.actor, row.reason, row.detail, row.remote_addr,
             row.prev_hash, row.hash),
        )
        return int(seq)

    def highest_seq_issued_raw(self) -> Any:
        """The largest seq ever handed out (survives deletion of the newest rows), as stored:
        a checker must not trust its type."""
        row = self.db.one(self.db.dialect.audit_seq_issued)
        return row[0] if row else 0

    def page(
        self, *, after: int = 0, before: int | None = None, limit: int = 100, peer_id: str | None = None,
        event_type: str | None = None, since: str | None = None, until: str | None = None, descending: bool = False,
    ) -> list[AuditRow]:
        where: list[str] = ["seq > ?"]
        params: list[Any] = [after]
        if before is not None:
            where.append("seq < ?")
            params.append(before)
        if peer_id is not None:
            where.append("peer_id = ?")
            params.append(peer_id)
        if event_type is not None:
            where.append("event_type = ?")
            params.append(event_type)
        if since is not None:
            where.append("ts >= ?")
            params.append(since)
        if until is not None:
            where.append("ts < ?")
            params.append(until)
        order = "DESC" if descending else "ASC"
        rows = self.db.all(
            f"SELECT {self._display_cols} FROM audit_log WHERE {' AND '.join(where)} ORDER BY seq {order} LIMIT ?",
            (*params, limit),
        )
        return [_display_row(r) for r in rows]

    def iter_listing(self, batch: int = 1000) -> Iterator[AuditRow]:
        """Every row in seq order, read as ``page`` reads them (for exports)."""
        after = 0
        while rows := self.page(after=after, limit=batch):
            yield from rows
            after = rows[-1].seq

    def iter_all(self, batch: int = 1000) -> Iterator[AuditRow]:
        after = 0
        while True:
            rows = self.db.all(f"SELECT {_COLS} FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", (after, batch))
            if not rows:
                return
            for r in rows:
                yield AuditRow(*r)
            after = rows[-1][0]
