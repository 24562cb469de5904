"""peer_pulls and fact_traffic: what operators watch of replication.

``peer_pulls`` is the publisher's view of each peer that pulls from this node: when it
last pulled, the ``seq`` its last page reached, how many facts it was served, and the clock
skew of its last token.  ``fact_traffic`` counts facts received (``in``) and served
(``out``) per minute, for the last hours only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from stigmem_node.store.db import Database

DIRECTIONS = ("in", "out")


@dataclass(frozen=True)
class PeerPull:
    """One peer's pulls from this node, as last recorded."""

    peer_id: str
    last_pull_at: str
    cursor_seq: int
    facts_served: int
    token_skew_ms: int | None


class ActivityRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record_pulls(self, pulls: Iterable[PeerPull]) -> None:
        """Upsert each peer's last pull (adding to ``facts_served``).  A peer removed
        meanwhile is skipped.  Call inside a transaction."""
        for p in pulls:
            self.db.execute(
                "INSERT INTO peer_pulls (peer_id, last_pull_at, cursor_seq, facts_served, token_skew_ms)"
                " SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM peers WHERE id = ?)"
                " ON CONFLICT (peer_id) DO UPDATE SET last_pull_at = excluded.last_pull_at,"
                " cursor_seq = excluded.cursor_seq, facts_served = peer_pulls.facts_served + excluded.facts_served,"
                " token_skew_ms = excluded.token_skew_ms",
                (p.peer_id, p.last_pull_at, p.cursor_seq, p.facts_served, p.token_skew_ms, p.peer_id),
            )

    def add_traffic(self, counts: Mapping[tuple[int, str], int]) -> None:
        """Add facts per (epoch minute, direction).  Call inside a transaction."""
        for (minute, direction), facts in sorted(counts.items()):
            if facts:
                self.db.execute(
                    "INSERT INTO fact_traffic (minute, direction, facts) VALUES (?, ?, ?)"
                    " ON CONFLICT (minute, direction) DO UPDATE SET facts = fact_traffic.facts + excluded.facts",
                    (minute, direction, facts),
                )

    def pulls(self) -> dict[str, PeerPull]:
        rows = self.db.all("SELECT peer_id, last_pull_at, cursor_seq, facts_served, token_skew_ms FROM peer_pulls")
        return {r[0]: PeerPull(r[0], r[1], int(r[2]), int(r[3]), None if r[4] is None else int(r[4])) for r in rows}

    def traffic(self, since_minute: int) -> list[tuple[int, str, int]]:
        """(minute, direction, facts) from ``since_minute`` on, oldest first."""
        rows = self.db.all("SELECT minute, direction, facts FROM fact_traffic WHERE minute >= ?"
                           " ORDER BY minute, direction", (since_minute,))
        return [(int(m), d, int(n)) for m, d, n in rows]

    def prune_traffic(self, before_minute: int) -> int:
        return self.db.execute("DELETE FROM fact_traffic WHERE minute < ?", (before_minute,))
