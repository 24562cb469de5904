"""nonce_cache: single-use token nonces."""

from __future__ import annotations

from stigmem_node.store.db import Database


class NonceRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def consume(self, nonce: str, peer_id: str, expires_at_ms: int) -> bool:
        """Record ``nonce``; False if it was already there.

        One INSERT on the primary key: atomic across connections and processes, so of any
        number of concurrent presentations exactly one succeeds.
        """
        cur = self.db.execute(
            "INSERT OR IGNORE INTO nonce_cache (nonce, peer_id, expires_at_ms) VALUES (?, ?, ?)",
            (nonce, peer_id, expires_at_ms),
        )
        return cur.rowcount == 1

    def consume_batch(self, items: list[tuple[str, str, int]]) -> list[bool]:
        """Record many (nonce, peer_id, expires_at_ms) in one transaction: True where the
        nonce was fresh, False where it was already there (a replay; also a nonce repeated
        within ``items`` after its first time), in input order."""
        with self.db.transaction():
            return [self.consume(nonce, peer_id, expires) for nonce, peer_id, expires in items]

    def prune(self, now_ms: int, batch: int = 5000) -> int:
        """Delete up to ``batch`` expired nonces, walking the expiry index."""
        cur = self.db.execute(
            "DELETE FROM nonce_cache WHERE nonce IN"
            " (SELECT nonce FROM nonce_cache WHERE expires_at_ms < ? ORDER BY expires_at_ms LIMIT ?)",
            (now_ms, batch),
        )
        return cur.rowcount

    def count(self) -> int:
        row = self.db.one("SELECT COUNT(*) FROM nonce_cache")
        return int(row[0]) if row else 0
