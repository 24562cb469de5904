"""nonce_cache: single-use token nonces."""

from __future__ import annotations

from collections.abc import Sequence

from stigmem_node.store.db import Database


class NonceRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def consume(self, nonce: str, peer_id: str, expires_at_ms: int) -> bool:
        """Record ``nonce``; False if it was already there.

        One INSERT on the primary key: atomic across connections and processes, so of any
        number of concurrent presentations exactly one succeeds.
        """
        return self.db.execute(
            "INSERT INTO nonce_cache (nonce, peer_id, expires_at_ms) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (nonce, peer_id, expires_at_ms),
        ) == 1

    def consume_batch(self, items: Sequence[tuple[str, str, int]]) -> list[bool]:
        """Record (nonce, peer_id, expires_at_ms) rows in one transaction (one commit for all):
        True where the nonce is fresh, False where it was already there, in input order.  A
        nonce twice in one batch is fresh once.

        On PostgreSQL the batch is one multi-row INSERT, committed on its own (one round trip
        to the server, where a transaction around it would take three); on SQLite, one INSERT
        per nonce in one transaction costs less than assembling one statement."""
        if self.db.engine == "sqlite":
            with self.db.transaction(exclusive=False):
                return [self.consume(*item) for item in items]
        inserted = {row[0] for row in self.db.all(
            "INSERT INTO nonce_cache (nonce, peer_id, expires_at_ms) VALUES "
            + ", ".join(["(?, ?, ?)"] * len(items)) + " ON CONFLICT DO NOTHING RETURNING nonce",
            [value for item in items for value in item])}
        fresh = []
        for nonce, _, _ in items:  # the first of a nonce named twice is the one inserted
            fresh.append(nonce in inserted)
            inserted.discard(nonce)
        return fresh

    def prune(self, now_ms: int, batch: int = 5000) -> int:
        """Delete up to ``batch`` expired nonces, walking the expiry index."""
        return self.db.execute(
            "DELETE FROM nonce_cache WHERE nonce IN"
            " (SELECT nonce FROM nonce_cache WHERE expires_at_ms < ? ORDER BY expires_at_ms LIMIT ?)",
            (now_ms, batch),
        )

    def count(self) -> int:
        row = self.db.one("SELECT COUNT(*) FROM nonce_cache")
        return int(row[0]) if row else 0
