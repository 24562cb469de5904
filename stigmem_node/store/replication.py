"""replication_state: the subscriber's cursor and counters per peer."""

from __future__ import annotations

from dataclasses import dataclass

from stigmem_node.store.db import Database, HeldLock

_COLS = ("peer_id, cursor, last_attempt_at, last_success_at, last_error, facts_ingested, facts_rejected,"
         " consecutive_failures")


@dataclass(frozen=True)
class ReplicationState:
    peer_id: str
    cursor: str | None
    last_attempt_at: str | None
    last_success_at: str | None
    last_error: str | None
    facts_ingested: int
    facts_rejected: int
    consecutive_failures: int = 0


class ReplicationRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, peer_id: str) -> ReplicationState:
        row = self.db.one(f"SELECT {_COLS} FROM replication_state WHERE peer_id = ?", (peer_id,))
        return ReplicationState(*row) if row else ReplicationState(peer_id, None, None, None, None, 0, 0, 0)

    def all(self) -> dict[str, ReplicationState]:
        return {r[0]: ReplicationState(*r) for r in self.db.all(f"SELECT {_COLS} FROM replication_state")}

    def _ensure(self, peer_id: str) -> None:
        self.db.execute("INSERT INTO replication_state (peer_id) VALUES (?) ON CONFLICT DO NOTHING", (peer_id,))

    def attempt(self, peer_id: str, when: str) -> None:
        with self.db.transaction():
            self._ensure(peer_id)
            self.db.execute("UPDATE replication_state SET last_attempt_at = ? WHERE peer_id = ?", (when, peer_id))

    def advance(self, peer_id: str, *, expected_cursor: str | None, cursor: str | None, ingested: int,
                rejected: int) -> bool:
        """Move the cursor from ``expected_cursor`` (compare-and-set) and add to the counters.

        Call inside the transaction that stores the page's facts.  False (and nothing
        changed) if another run moved the cursor meanwhile.
        """
        self._ensure(peer_id)
        return self.db.execute(
            "UPDATE replication_state SET cursor = ?, facts_ingested = facts_ingested + ?,"
            " facts_rejected = facts_rejected + ? WHERE peer_id = ? AND cursor IS NOT DISTINCT FROM ?",
            (cursor, ingested, rejected, peer_id, expected_cursor),
        ) == 1

    def tombstone_cursor(self, peer_id: str) -> str | None:
        """Where the pull of ``peer_id``'s tombstones resumes (None: from the start)."""
        row = self.db.one("SELECT tombstone_cursor FROM replication_state WHERE peer_id = ?", (peer_id,))
        return row[0] if row else None

    def set_tombstone_cursor(self, peer_id: str, cursor: str | None) -> None:
        """Call inside the transaction that applies the page's tombstones."""
        self._ensure(peer_id)
        self.db.execute("UPDATE replication_state SET tombstone_cursor = ? WHERE peer_id = ?", (cursor, peer_id))

    def pull_lease(self, peer_id: str) -> HeldLock | None:
        """The right to pull ``peer_id`` now, until released; None if another process (a
        replica) or thread is pulling it: at most one pulls a peer at a time."""
        return self.db.try_lock(f"stigmem-pull:{peer_id}")

    def finish(self, peer_id: str, when: str, error: str | None) -> None:
        with self.db.transaction():
            self._ensure(peer_id)
            if error is None:
                self.db.execute(
                    "UPDATE replication_state SET last_success_at = ?, last_error = NULL, consecutive_failures = 0"
                    " WHERE peer_id = ?",
                    (when, peer_id),
                )
            else:
                self.db.execute("UPDATE replication_state SET last_error = ?,"
                                " consecutive_failures = consecutive_failures + 1 WHERE peer_id = ?",
                                (error[:500], peer_id))
