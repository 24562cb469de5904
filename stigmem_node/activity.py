"""Replication activity as operators see it: who pulled from us, and facts in and out per minute.

Serving a page must stay a read, so the publisher only *notes* each pull here (in memory,
from whichever worker thread served it); a serving node writes the notes together every
couple of seconds (``flush``, from ``background.write_activity``), the way API-key touches
are written.  Facts received are counted in the transaction that stores them
(``replication.ingest``), so a cron ``pull`` counts them too.

What is kept (``store.activity``) feeds the metrics, the status page and ``doctor``.  A
note lost in a crash costs a second of statistics, never a fact.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from stigmem_node.store.activity import PeerPull

#: How long facts in and out per minute are kept (the status page charts the last hour).
TRAFFIC_KEPT_MINUTES = 180


class ActivityStore(Protocol):
    def record_pulls(self, pulls: list[PeerPull]) -> None: ...

    def add_traffic(self, counts: dict[tuple[int, str], int]) -> None: ...


def minute_of(epoch_ms: int) -> int:
    return epoch_ms // 60_000


class Activity:
    """Pulls served, noted in memory until flushed."""

    def __init__(self, now_ms: Callable[[], int], now_iso: Callable[[], str]) -> None:
        self._now_ms = now_ms
        self._now_iso = now_iso
        self._lock = threading.Lock()
        self._pulls: dict[str, PeerPull] = {}
        self._out: dict[tuple[int, str], int] = {}

    def served(self, peer_id: str, cursor_seq: int, facts: int, token_skew_ms: int | None) -> None:
        """A page of ``facts`` facts, reaching ``cursor_seq``, was served to ``peer_id``."""
        now = self._now_ms()
        with self._lock:
            before = self._pulls.get(peer_id)
            served = facts + (before.facts_served if before else 0)
            self._pulls[peer_id] = PeerPull(peer_id, self._now_iso(), cursor_seq, served, token_skew_ms)
            if facts:
                key = (minute_of(now), "out")
                self._out[key] = self._out.get(key, 0) + facts

    def pending(self) -> bool:
        with self._lock:
            return bool(self._pulls or self._out)

    def flush(self, store: ActivityStore, transaction: Callable[[], AbstractContextManager[object]]) -> int:
        """Write the notes taken since the last flush (in the write lane); the number of
        peers written.  On a storage error the notes are put back for the next flush."""
        with self._lock:
            pulls, self._pulls = self._pulls, {}
            out, self._out = self._out, {}
        if not pulls and not out:
            return 0
        try:
            with transaction():
                store.record_pulls(list(pulls.values()))
                store.add_traffic(out)
        except BaseException:
            self._restore(pulls, out)
            raise
        return len(pulls)

    def _restore(self, pulls: dict[str, PeerPull], out: dict[tuple[int, str], int]) -> None:
        with self._lock:
            for peer_id, p in pulls.items():
                newer = self._pulls.get(peer_id)
                self._pulls[peer_id] = p if newer is None else PeerPull(
                    peer_id, newer.last_pull_at, newer.cursor_seq, newer.facts_served + p.facts_served,
                    newer.token_skew_ms)
            for key, n in out.items():
                self._out[key] = self._out.get(key, 0) + n
