"""Reading the audit trail: filtered listings, pages, the newest rows and exports.

One reader for ``GET /v1/federation/audit`` and the ``audit list|tail|export`` commands.
Rows come back as entries (``audit.entry_dict``), read leniently, so that a tampered
row is shown as it is instead of failing the listing; ``audit verify`` judges them.
Writing the trail is ``audit.AuditTrail``; checking it is ``audit_verify``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from stigmem_node.audit import entry_dict
from stigmem_node.store.audit import AuditRepo, AuditRow
from stigmem_node.store.peers import PeerRepo

FOLLOW_BATCH = 500


@dataclass(frozen=True)
class AuditFilter:
    """Which rows to read: a peer (its peer id), an event type, and a time range
    ``since <= ts < until`` (RFC 3339 UTC text as the trail stores it)."""

    peer_id: str | None = None
    event_type: str | None = None
    since: str | None = None
    until: str | None = None

    def matches(self, row: AuditRow) -> bool:
        """The filter applied to a row already read (an export reads every row); an empty
        value filters nothing."""
        return not ((self.peer_id and row.peer_id != self.peer_id)
                    or (self.event_type and row.event_type != self.event_type)
                    or (self.since and row.ts < self.since)
                    or (self.until and row.ts >= self.until))


@dataclass(frozen=True)
class AuditPage:
    entries: list[dict[str, Any]] = field(default_factory=list)
    has_more: bool = False


class AuditQuery:
    def __init__(self, repo: AuditRepo, peers: PeerRepo) -> None:
        self.repo = repo
        self.peers = peers

    def peer_id(self, ref: str | None) -> str | None:
        """The peer id of a peer named by its node id or its peer id; other text is kept as
        given (it matches no row), and no reference (None or empty) means every peer."""
        if not ref:
            return None
        peer = self.peers.by_node_id(ref)
        return peer.id if peer is not None else ref

    def where(self, *, peer: str | None = None, event_type: str | None = None, since: str | None = None,
              until: str | None = None) -> AuditFilter:
        """A filter, with ``peer`` (a node id or peer id) resolved to its peer id."""
        return AuditFilter(peer_id=self.peer_id(peer), event_type=event_type, since=since, until=until)

    def _rows(self, flt: AuditFilter, **kw: Any) -> list[AuditRow]:
        return self.repo.page(peer_id=flt.peer_id, event_type=flt.event_type, since=flt.since, until=flt.until, **kw)

    def entries(self, flt: AuditFilter, *, limit: int) -> list[dict[str, Any]]:
        """The first ``limit`` entries that match, oldest first."""
        return [entry_dict(r) for r in self._rows(flt, limit=limit)]

    def page(self, flt: AuditFilter, *, cursor: int | None, limit: int, descending: bool = False) -> AuditPage:
        """Up to ``limit`` entries after the entry ``cursor`` (before it when ``descending``),
        and whether more follow."""
        rows = self._rows(
            flt, after=cursor if (cursor is not None and not descending) else 0,
            before=cursor if (cursor is not None and descending) else None, limit=limit + 1, descending=descending,
        )
        return AuditPage([entry_dict(r) for r in rows[:limit]], len(rows) > limit)

    def newest(self, count: int) -> list[dict[str, Any]]:
        """The newest ``count`` entries, oldest first."""
        return [entry_dict(r) for r in reversed(self.repo.page(limit=count, descending=True))]

    def after(self, seq: int, limit: int = FOLLOW_BATCH) -> list[dict[str, Any]]:
        """Up to ``limit`` entries appended after the entry ``seq``, oldest first."""
        return [entry_dict(r) for r in self.repo.page(after=seq, limit=limit)]

    def export(self, flt: AuditFilter) -> Iterator[dict[str, Any]]:
        """Every matching entry with its ``prev_hash``, oldest first, read in batches."""
        for row in self.repo.iter_listing():
            if flt.matches(row):
                entry = entry_dict(row)
                entry["prev_hash"] = row.prev_hash
                yield entry
