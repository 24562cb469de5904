"""Ingesting a pulled page: store the facts a check let through, with the cursor.

What each fact must be on its own (its CID, its sender, its scope, its signature) is checked
with no storage (``stigmem_node.page_check``, under the peer's ``policy``), in a worker
process or thread.  Storing then refuses what only storage can tell: a stored id with another
CID, a stored ``valid_until`` extended, an erased fact.  It writes the valid facts, the new
cursor and the counters in one transaction, and audits the refused facts in it (at most
``AUDIT_ROWS_PER_PAGE`` rows, then one summary row).  The cursor moves by compare-and-set: a
page that another run already stored is dropped (``Overlap``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from stigmem_node import facts as fm
from stigmem_node import origin as om
from stigmem_node.activity import minute_of
from stigmem_node.audit import AuditTrail
from stigmem_node.clock import Clock, parse_rfc3339
from stigmem_node.errors import ValidationError
from stigmem_node.hlc import HLC
from stigmem_node.keys import public_key_from_b64
from stigmem_node.page_check import CheckedPage, PagePolicy, Rejection
from stigmem_node.store.activity import ActivityRepo
from stigmem_node.store.facts import FactRepo
from stigmem_node.store.peers import PeerRecord, PeerRepo
from stigmem_node.store.replication import ReplicationRepo
from stigmem_node.store.tombstones import TombstoneRepo

FACT_REJECTED = "fact_rejected"
FACTS_REJECTED_SUMMARY = "facts_rejected_summary"
AUDIT_ROWS_PER_PAGE = 20


class IngestStore(Protocol):
    """The storage ingest uses (``stigmem_node.store.Store`` is one)."""

    @property
    def peers(self) -> PeerRepo: ...

    @property
    def facts(self) -> FactRepo: ...

    @property
    def replication(self) -> ReplicationRepo: ...

    @property
    def tombstones(self) -> TombstoneRepo: ...

    @property
    def activity(self) -> ActivityRepo: ...

    def transaction(self) -> AbstractContextManager[object]: ...


class Overlap(Exception):
    """Another run advanced this peer's cursor first."""


@dataclass(frozen=True)
class StoredPage:
    new: int
    duplicates: int
    rejected: int


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class Ingest:
    def __init__(self, store: IngestStore, audit: AuditTrail, clock: Clock, hlc: Callable[[], HLC], *,
                 federate_instructions: bool = False) -> None:
        """``hlc``: the node's hybrid logical clock (read when a page is stored, so that it is
        seeded only when one is)."""
        self.store = store
        self.audit = audit
        self.clock = clock
        self.hlc = hlc
        self.federate_instructions = federate_instructions

    def peer_keys(self, peer: PeerRecord) -> list[Ed25519PublicKey]:
        """The peer's pinned keys that are not past their retirement."""
        now = self.clock.now()
        keys = []
        for k in self.store.peers.keys(peer.id):
            if k.retire_after and parse_rfc3339(k.retire_after) < now:
                continue
            try:
                keys.append(public_key_from_b64(k.public_key))
            except ValueError:
                continue
        return keys

    def policy(self, peer: PeerRecord) -> PagePolicy:
        """What a page from ``peer`` may hold (``page_check``)."""
        return PagePolicy(peer.node_id, tuple(peer.allowed_scopes), self.federate_instructions)

    def store_page(self, peer: PeerRecord, page: CheckedPage, cursor_before: str | None,
                   cursor_after: str | None) -> StoredPage:
        """Store the checked facts, the cursor and the counters in one transaction, and audit
        the rejections in it.  Raises ``Overlap`` (nothing stored) if the cursor moved."""
        rejections = list(page.rejections)
        now = self.clock.now_iso()
        hlc = self.hlc()
        # The page's newest clock merged once (fixed-width HLC text sorts as the clocks do); if
        # it is skewed, the others are merged one by one below.
        newest = max((e.fact.hlc for e in page.entries if e.fact.hlc), default="")
        merged = True
        if newest:
            try:
                hlc.receive(newest)
            except ValidationError:
                merged = False
        with self.store.transaction():
            known = self.store.facts.known([e.fact.id for e in page.entries])
            erased = self._erased(page.entries)
            rows, dup = [], 0
            seen: dict[str, tuple[str, str | None]] = {}  # id -> (cid, valid_until) stored from this page
            origin_texts: dict[int, str] = {}  # the text of each origin block, by the block's identity
            for entry in page.entries:
                fact = entry.fact
                if fact.id in erased:
                    rejections.append((fact.id, ValidationError("fact_erased",
                                                                "this fact, or its entity, was erased on this node")))
                    continue
                stored = known.get(fact.id) or seen.get(fact.id)
                if stored is not None:
                    if stored[0] != fact.cid:
                        rejections.append((fact.id, ValidationError("id_collision",
                                                                    "a stored fact has this id and another CID")))
                    elif _extends(stored[1], fact.valid_until):
                        rejections.append((fact.id, ValidationError("valid_until_extension",
                                                                    "the fact would extend a stored valid_until")))
                    else:
                        dup += 1
                    continue
                seen[fact.id] = (fact.cid, fact.valid_until)
                if fact.hlc and not merged:
                    try:
                        hlc.receive(fact.hlc)
                    except ValidationError:
                        pass  # a skewed peer clock must not drag ours; the fact keeps its own HLC
                stamp = fact.hlc or hlc.tick()
                # The entry as stored: the fact with its stamp and sender, its origin block (one
                # text for the page's facts that share it) and the signature.
                text = fm.local_fact_text(fact, fact_id=fact.id, cid=fact.cid, timestamp=fact.timestamp, hlc=stamp,
                                          origin_node_id=fact.origin_node_id, received_from=peer.node_id)
                origin_text = origin_texts.get(id(entry.origin))
                if origin_text is None:
                    origin_text = origin_texts[id(entry.origin)] = _dumps(entry.origin.to_wire())
                stored_entry = f'{{"fact":{text},"origin":{origin_text},"origin_sig":{_dumps(entry.origin_sig)}}}'
                rows.append((
                    fact.id, fact.cid, fact.entity, fact.relation, fact.value_type, fact.value_v, fact.interpret_as,
                    fact.source, fact.timestamp, stamp, fm.expiry_key(fact.valid_until), fact.confidence, fact.scope,
                    fact.origin_node_id, entry.origin_sig, stored_entry, peer.node_id, now,
                ))
            if not self.store.replication.advance(peer.id, expected_cursor=cursor_before, cursor=cursor_after,
                                                  ingested=len(rows), rejected=len(rejections)):
                raise Overlap()
            self.store.facts.insert_many(rows)
            if rows:
                self.store.activity.add_traffic({(minute_of(self.clock.now_ms()), "in"): len(rows)})
            self._audit_rejections(peer, rejections)
        return StoredPage(len(rows), dup, len(rejections))

    def _erased(self, entries: list[om.PulledEntry]) -> set[str]:
        """The ids of ``entries`` this node must refuse: tombstoned by id, or of an entity
        tombstoned at or after the fact's timestamp."""
        erased = self.store.tombstones.erased_ids([e.fact.id for e in entries])
        entities = self.store.tombstones.entities_erased_at(sorted({e.fact.entity for e in entries}))
        for e in entries:
            at = entities.get(e.fact.entity)
            if at is not None and not _after(e.fact.timestamp, at):
                erased.add(e.fact.id)
        return erased

    def _audit_rejections(self, peer: PeerRecord, rejections: list[Rejection]) -> None:
        """One row per rejected fact, up to a bound per page; the rest in one summary row
        that still names every fact and its reason (so a peer cannot flood the trail)."""
        actor = f"peer:{peer.node_id}"
        for fact_id, exc in rejections[:AUDIT_ROWS_PER_PAGE]:
            self.audit.record(FACT_REJECTED, peer_id=peer.id, actor=actor, reason=exc.code,
                              detail={"fact_id": (fact_id or "")[:256] or None, "field": exc.field,
                                      "message": exc.message[:300]})
        rest = rejections[AUDIT_ROWS_PER_PAGE:]
        if rest:
            by_reason: dict[str, int] = {}
            for _, exc in rest:
                by_reason[exc.code] = by_reason.get(exc.code, 0) + 1
            self.audit.record(FACTS_REJECTED_SUMMARY, peer_id=peer.id, actor=actor, reason="many_rejections",
                              detail={"count": len(rest), "by_reason": by_reason,
                                      "facts": [[(fid or "")[:64], exc.code] for fid, exc in rest]})


def _extends(stored: str | None, incoming: str | None) -> bool:
    """Whether ``incoming`` would extend a stored finite ``valid_until``."""
    if stored is None:
        return False
    if incoming is None:
        return True
    try:
        return fm.parse_time(incoming) > fm.parse_time(stored)
    except (TypeError, ValueError, OverflowError):
        return True


def _after(timestamp: str, erased_at: str) -> bool:
    """Whether a fact's ``timestamp`` is later than an entity's ``erased_at`` (a timestamp
    that does not parse is not: the fact is refused)."""
    try:
        return fm.parse_time(timestamp) > fm.parse_time(erased_at)
    except (TypeError, ValueError, OverflowError):
        return False
