"""Apply a peer's tombstones: the subscriber's side of erasure.

After a peer's facts, the subscriber pulls the tombstones the peer serves
(``GET /v1/federation/tombstones``, its own cursor per peer) and hands each page here.

- ``check_page`` (no storage: run in a worker thread): each wire tombstone is parsed strictly
  (``tombstones.tombstone_from_wire``); its ``origin_node_id`` must be the peer's own node id
  (only the origin erases its facts elsewhere, and nodes do not relay); its signature must
  verify under the peer's pinned keys (``t2.1``).  A refused tombstone changes nothing.
- ``store_page`` (one transaction, in the write lane): each accepted tombstone is kept
  (``received_from`` = the peer; never served onwards) and its facts are erased: a fact
  tombstone erases that fact if it came from this origin; an entity tombstone erases the
  entity's facts from this origin whose ``timestamp`` is at or before ``erased_at`` (their
  ids, only the ids, recorded with the tombstone: ``GET /v1/facts/{id}`` answers 410 for
  them as for a fact erased by id).  From then on ingest refuses those facts (``fact_erased``).
  A tombstone already kept changes nothing.  Applied tombstones are audited as ``fact_erased``
  (ids, CIDs, origin, reason; an entity by the SHA-256 of its name), refused ones as
  ``tombstone_refused`` with a reason code: never content.  The cursor moves in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from stigmem_node import tombstones as tm
from stigmem_node.audit import FACT_ERASED, AuditTrail
from stigmem_node.encoding import sha256_hex
from stigmem_node.store.facts import FactRepo
from stigmem_node.store.peers import PeerRecord
from stigmem_node.store.replication import ReplicationRepo
from stigmem_node.store.tombstones import TombstoneRepo

TOMBSTONE_REFUSED = "tombstone_refused"
MAX_AUDITED_REFUSALS = 20  # rows per page; the rest are counted in the last one


class ErasureStore(Protocol):
    @property
    def facts(self) -> FactRepo: ...

    @property
    def tombstones(self) -> TombstoneRepo: ...

    @property
    def replication(self) -> ReplicationRepo: ...

    def transaction(self) -> AbstractContextManager[object]: ...


@dataclass
class CheckedTombstones:
    accepted: list[tm.Tombstone] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (index in the page, reason code)
    bad_signature: bool = False


@dataclass(frozen=True)
class AppliedTombstones:
    applied: int  # tombstones kept now
    facts_erased: int
    refused: int


def check_page(peer: PeerRecord, items: Sequence[Any], keys: Sequence[Ed25519PublicKey]) -> CheckedTombstones:
    checked = CheckedTombstones()
    for i, item in enumerate(items):
        try:
            tomb = tm.tombstone_from_wire(item, field_prefix=f"tombstones[{i}].")
        except tm.TombstoneRejected:
            checked.refused.append((i, "invalid_tombstone"))
            continue
        if tomb.origin_node_id != peer.node_id:
            checked.refused.append((i, "not_origin"))
            continue
        if not tm.verify_tombstone(keys, tomb):
            checked.refused.append((i, "invalid_signature"))
            checked.bad_signature = True
            continue
        checked.accepted.append(tomb)
    return checked


class RemoteErasure:
    def __init__(self, store: ErasureStore, audit: AuditTrail, reclaim: Callable[[], bool]) -> None:
        """``reclaim``: the engine's ``reclaim_erased``, run after a page that erased facts."""
        self.store = store
        self.audit = audit
        self.reclaim = reclaim

    def store_page(self, peer: PeerRecord, checked: CheckedTombstones, cursor: str | None) -> AppliedTombstones:
        applied = erased = 0
        actor = f"peer:{peer.node_id}"
        with self.store.transaction():
            for tomb in checked.accepted:
                count = self._apply(peer, tomb, actor)
                if count is not None:
                    applied += 1
                    erased += count
            for n, (index, code) in enumerate(checked.refused[:MAX_AUDITED_REFUSALS]):
                extra = len(checked.refused) - MAX_AUDITED_REFUSALS if n == MAX_AUDITED_REFUSALS - 1 else 0
                self.audit.record(TOMBSTONE_REFUSED, peer_id=peer.id, actor=actor, reason=code,
                                  detail={"index": index, "origin_node_id": peer.node_id,
                                          **({"more_refused": extra} if extra > 0 else {})})
            self.store.replication.set_tombstone_cursor(peer.id, cursor)
        if erased:
            self.reclaim()
        return AppliedTombstones(applied, erased, len(checked.refused))

    def _apply(self, peer: PeerRecord, tomb: tm.Tombstone, actor: str) -> int | None:
        """Keep ``tomb`` and erase its facts; how many facts, or None if it was kept before."""
        if tomb.kind == "fact":
            fact_id = tomb.fact_id or ""  # a fact tombstone always names one (tombstone_from_wire)
            if self.store.tombstones.of_fact(fact_id) is not None:
                return None
            row = self.store.facts.get(fact_id)
            victims = [(row.id, row.cid)] if row is not None and row.origin_node_id == peer.node_id else []
            scopes = [row.scope] if row is not None else []
        else:
            entity = tomb.entity or ""  # an entity tombstone always names one (tombstone_from_wire)
            if any(t.origin_node_id == tomb.origin_node_id and t.erased_at == tomb.erased_at
                   for t in self.store.tombstones.of_entity(entity)):
                return None
            victims = self.store.facts.of_entity_from(entity, peer.node_id, tomb.erased_at)
            scopes = []
        seq = self.store.tombstones.insert(
            kind=tomb.kind, fact_id=tomb.fact_id, entity=tomb.entity, cid=tomb.cid,
            scopes=json.dumps(sorted(set(scopes)), separators=(",", ":")), erased_at=tomb.erased_at,
            origin_node_id=tomb.origin_node_id, reason=tomb.reason, origin_sig=tomb.origin_sig, received_from=peer.id)
        if tomb.kind == "entity":
            self.store.tombstones.record_erased(seq, [v[0] for v in victims])
        for fact_id, _ in victims:
            self.store.facts.erase(fact_id)
        detail: dict[str, Any] = {"kind": tomb.kind, "tombstone_seq": seq, "fact_ids": [v[0] for v in victims],
                                  "cids": [v[1] for v in victims], "count": len(victims),
                                  "origin_node_id": tomb.origin_node_id, "erased_at": tomb.erased_at}
        if tomb.kind == "fact":
            detail["tombstone_fact_id"] = tomb.fact_id
        else:
            detail["entity_sha256"] = sha256_hex((tomb.entity or "").encode("utf-8"))
        self.audit.record(FACT_ERASED, peer_id=peer.id, actor=actor, reason=tomb.reason, detail=detail)
        return len(victims)
