"""Erasure: remove a fact, or every fact of an entity, for real, and keep a tombstone.

- **Our own fact** (``received_from`` NULL): the tombstone is signed with this node's key
  (``tombstones.sign_tombstone``, tuple ``t2.1``) and served to the peers that may have
  received the fact (``publish.Publisher.tombstone_page``).
- **A received fact**: the tombstone is local (no signature, never served: only the origin
  can erase its facts elsewhere); this node then refuses the fact if it arrives again
  (``replication.ingest``).
- **An entity**: every stored fact of it is erased (ours and received ones); one tombstone,
  signed, covering the scopes of our own erased facts (served for those scopes only).  The
  erased facts' ids (only the ids) are recorded with it (``erased_facts``), so that
  ``GET /v1/facts/{id}`` answers 410 for each, as for a fact erased by id.
  Facts of the entity that arrive later with a ``timestamp`` at or before ``erased_at`` are
  refused.

The tombstone and the deletion are one transaction (the schema's guard refuses a delete
without a fact tombstone of the id, or an entity tombstone that recorded the id).  The
``fact_erased`` audit row names ids, CIDs, the reason and, for an entity, a SHA-256 digest of
its name: never the content, since the trail is append-only.
After the commit, the engine reclaims the deleted rows' space (``reclaim_erased``: a WAL
truncation on SQLite, whose connections run with ``secure_delete``; a VACUUM on PostgreSQL).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, Protocol

from stigmem_node import tombstones as tm
from stigmem_node.audit import FACT_ERASED, AuditTrail
from stigmem_node.clock import Clock
from stigmem_node.encoding import sha256_hex
from stigmem_node.errors import NotFound, ValidationError
from stigmem_node.facts import MAX_ID_CHARS, MAX_NAME_CHARS
from stigmem_node.identity import NodeIdentity
from stigmem_node.store.facts import FactRepo
from stigmem_node.store.tombstones import TombstoneRepo, TombstoneRow

MAX_AUDITED_IDS = 200  # ids (and CIDs) named in one audit row; the count is always exact


class ErasureStore(Protocol):
    """The storage erasure uses (``stigmem_node.store.Store`` is one)."""

    @property
    def facts(self) -> FactRepo: ...

    @property
    def tombstones(self) -> TombstoneRepo: ...

    def transaction(self) -> AbstractContextManager[object]: ...


def tombstone_view(row: TombstoneRow) -> dict[str, Any]:
    """The API view of a stored tombstone: its wire fields, plus seq, scopes and whether it is
    served to peers."""
    wire = _tombstone(row).to_wire()
    wire.update(seq=row.seq, scopes=json.loads(row.scopes), local_only=row.origin_sig is None,
                received_from=row.received_from)
    return wire


def _tombstone(row: TombstoneRow) -> tm.Tombstone:
    return tm.Tombstone(kind=row.kind, fact_id=row.fact_id, entity=row.entity, cid=row.cid, erased_at=row.erased_at,
                        origin_node_id=row.origin_node_id, reason=row.reason, origin_sig=row.origin_sig)


def check_fact_id(fact_id: Any) -> str:
    if not isinstance(fact_id, str) or not fact_id or len(fact_id) > MAX_ID_CHARS or "\x00" in fact_id:
        raise ValidationError("invalid_request", f"fact_id must be a string of 1 to {MAX_ID_CHARS} characters",
                              field="fact_id")
    return fact_id


def check_entity(entity: Any) -> str:
    if not isinstance(entity, str) or not entity.strip() or len(entity) > MAX_NAME_CHARS or "\x00" in entity:
        raise ValidationError("invalid_request", f"entity must be a string of 1 to {MAX_NAME_CHARS} characters",
                              field="entity")
    try:
        entity.encode("utf-8")
    except UnicodeError:
        raise ValidationError("invalid_request", "entity must be valid Unicode", field="entity") from None
    return entity


class Erasure:
    def __init__(self, store: ErasureStore, identity: Callable[[], NodeIdentity], audit: AuditTrail, clock: Clock,
                 reclaim: Callable[[], bool]) -> None:
        """``identity``: this node's current identity (read at each erasure: the key rotates);
        ``reclaim``: the engine's ``reclaim_erased``, run after each erasure commits."""
        self.store = store
        self.identity = identity
        self.audit = audit
        self.clock = clock
        self.reclaim = reclaim

    def erase_fact(self, fact_id: Any, reason: Any, *, actor: str, remote_addr: str | None = None,
                   ) -> dict[str, Any]:
        """Erase one stored fact; its tombstone's view, with ``created`` false if the fact
        was already erased (the view is then of the tombstone that erased it: its own, or its
        entity's).  ``fact_not_found`` if no fact has this id and none was erased."""
        fact_id = check_fact_id(fact_id)
        reason = tm.check_reason(reason)
        ident = self.identity()
        with self.store.transaction():
            row = self.store.facts.get(fact_id)
            if row is None:
                existing = self.store.tombstones.erasing(fact_id)
                if existing is None:
                    raise NotFound("fact_not_found", "no fact with this id")
                return {**tombstone_view(existing), "created": False}
            own = row.received_from is None and row.origin_node_id == ident.node_id
            tomb = tm.Tombstone(kind="fact", fact_id=row.id, entity=None, cid=row.cid, erased_at=self.clock.now_iso(),
                                origin_node_id=row.origin_node_id, reason=reason)
            if own:
                tomb = replace(tomb, origin_sig=tm.sign_tombstone(ident, tomb))
            seq = self._insert(tomb, [row.scope])
            self.store.facts.erase(row.id)
            self.audit.record(FACT_ERASED, actor=actor, reason=reason, remote_addr=remote_addr,
                              detail={"kind": "fact", "tombstone_seq": seq, "fact_ids": [row.id], "cids": [row.cid],
                                      "count": 1, "origin_node_id": row.origin_node_id, "served": own})
            stored = self.store.tombstones.of_fact(row.id)
        self.reclaim()
        if stored is None:  # pragma: no cover - inserted in the transaction above
            raise NotFound("fact_not_found", "no fact with this id")
        return {**tombstone_view(stored), "created": True}

    def erase_entity(self, entity: Any, reason: Any, *, actor: str, remote_addr: str | None = None,
                     ) -> dict[str, Any]:
        """Erase every stored fact of ``entity`` (there may be none: the tombstone still
        refuses later copies); the new tombstone's view, with the number of facts erased."""
        entity = check_entity(entity)
        reason = tm.check_reason(reason)
        ident = self.identity()
        with self.store.transaction():
            found = self.store.facts.of_entity(entity)
            own_scopes = sorted({scope for _, _, scope, received in found if received is None})
            tomb = tm.Tombstone(kind="entity", fact_id=None, entity=entity, cid=None, erased_at=self.clock.now_iso(),
                                origin_node_id=ident.node_id, reason=reason)
            tomb = replace(tomb, origin_sig=tm.sign_tombstone(ident, tomb))
            seq = self._insert(tomb, own_scopes)
            self.store.tombstones.record_erased(seq, [f[0] for f in found])
            erased = self.store.facts.erase_entity(entity)
            self.audit.record(FACT_ERASED, actor=actor, reason=reason, remote_addr=remote_addr,
                              detail={"kind": "entity", "tombstone_seq": seq,
                                      "entity_sha256": sha256_hex(entity.encode("utf-8")),
                                      "fact_ids": [f[0] for f in found[:MAX_AUDITED_IDS]],
                                      "cids": [f[1] for f in found[:MAX_AUDITED_IDS]], "count": erased,
                                      "origin_node_id": ident.node_id, "served": bool(own_scopes)})
            stored = self.store.tombstones.of_entity(entity)[-1]
        self.reclaim()
        return {**tombstone_view(stored), "created": True, "facts_erased": erased}

    def status(self, entity: Any) -> dict[str, Any]:
        """Whether ``entity`` is erased on this node, when (the latest), and its tombstones."""
        entity = check_entity(entity)
        rows = self.store.tombstones.of_entity(entity)
        return {"entity": entity, "erased": bool(rows), "erased_at": max((r.erased_at for r in rows), default=None),
                "tombstones": [tombstone_view(r) for r in rows]}

    def resign_all(self, batch: int = 2000) -> int:
        """Re-sign this node's own tombstones with the current key (after a rotation)."""
        ident = self.identity()
        after, done = 0, 0
        while rows := self.store.tombstones.own_signed(ident.node_id, after, batch):
            updates = [(tm.sign_tombstone(ident, _tombstone(r)), r.seq) for r in rows]
            with self.store.transaction():
                self.store.tombstones.set_signatures(updates)
            done += len(rows)
            after = rows[-1].seq
        return done

    def _insert(self, tomb: tm.Tombstone, scopes: list[str]) -> int:
        return self.store.tombstones.insert(
            kind=tomb.kind, fact_id=tomb.fact_id, entity=tomb.entity, cid=tomb.cid,
            scopes=json.dumps(sorted(set(scopes)), separators=(",", ":")), erased_at=tomb.erased_at,
            origin_node_id=tomb.origin_node_id, reason=tomb.reason, origin_sig=tomb.origin_sig, received_from=None)
