"""Federation use cases: the peer registry.

Register a peer from its signed declaration, approve it by key fingerprint, suspend,
resume, revoke and remove it.  Every state change and its audit row commit in one
transaction.  The well-known fetch is injected, so this module knows nothing of HTTP.

The operator actions are synchronous (callers run them in the write lane).  The two
asynchronous use cases, ``register`` and ``refresh_peer_keys``, fetch on the event loop and
run their storage work in the lanes they are given (``stigmem_node.offload.Offload``).
"""

from __future__ import annotations

import builtins
import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature

from stigmem_node import audit as ev
from stigmem_node import declaration as decl_mod
from stigmem_node.audit import AuditTrail, entry_dict
from stigmem_node.clock import Clock, iso, parse_rfc3339
from stigmem_node.encoding import b64url_decode, fingerprint
from stigmem_node.errors import Conflict, NotFound, OutboundError, ValidationError
from stigmem_node.identity import NodeIdentity
from stigmem_node.keys import endorsement_payload, key_id_of, public_key_from_b64
from stigmem_node.offload import Offload
from stigmem_node.ratelimit import UnauthenticatedAuditGate
from stigmem_node.store import IntegrityConflict, Store
from stigmem_node.store.peers import PeerKey, PeerRecord
from stigmem_node.store.replication import ReplicationState
from stigmem_node.vocabulary import FEDERATED_SCOPES

log = logging.getLogger("stigmem_node.federation")

FetchWellKnown = Callable[[str], Awaitable[dict[str, Any]]]

FEDERATABLE_SCOPES = FEDERATED_SCOPES

# Registration outcomes beyond the declaration's own reason codes.
WELL_KNOWN_UNREACHABLE = "well_known_unreachable"
WELL_KNOWN_NODE_ID_MISMATCH = "well_known_node_id_mismatch"
WELL_KNOWN_PUBKEY_MISMATCH = "well_known_pubkey_mismatch"


class KeyRefresh(StrEnum):
    """The outcome of ``Federation.refresh_peer_keys``; its value is the code ``peers
    refresh`` shows (a ``StrEnum``: it is that string, in comparisons and in JSON)."""

    ROTATED = "key_rotated"
    UNCHANGED = "key_unchanged"
    WELL_KNOWN_UNREACHABLE = WELL_KNOWN_UNREACHABLE
    WELL_KNOWN_NODE_ID_MISMATCH = WELL_KNOWN_NODE_ID_MISMATCH
    NOT_ENDORSED = "rotation_not_endorsed"

    @property
    def rotated(self) -> bool:
        """Whether a new key of the peer was adopted."""
        return self is KeyRefresh.ROTATED


@dataclass(frozen=True)
class Actor:
    """Who asked for an action, for the audit trail."""

    name: str
    remote_addr: str | None = None


def _key_id_or_none(pubkey: str) -> str | None:
    try:
        return key_id_of(pubkey)
    except ValueError:
        return None  # a rejected declaration may carry a key that is not a key


def peer_view(peer: PeerRecord) -> dict[str, Any]:
    return {
        "peer_id": peer.id,
        "node_id": peer.node_id,
        "node_url": peer.node_url,
        "status": peer.status,
        "allowed_scopes": list(peer.allowed_scopes),
        "federation_pubkey": peer.federation_pubkey,
        "pubkey_fingerprint": fingerprint(peer.federation_pubkey),
        "key_id": _key_id_or_none(peer.federation_pubkey),
        "signed_at": peer.signed_at,
        "reject_reason": peer.reject_reason,
        "created_at": peer.created_at,
        "approved_at": peer.approved_at,
        "approved_by": peer.approved_by,
        "established_at": peer.approved_at,
        "updated_at": peer.updated_at,
    }


def replication_view(state: ReplicationState) -> dict[str, Any]:
    """The subscriber's view of a peer."""
    return {
        "cursor": state.cursor, "last_attempt_at": state.last_attempt_at, "last_success_at": state.last_success_at,
        "last_error": state.last_error, "facts_ingested": state.facts_ingested, "facts_rejected": state.facts_rejected,
    }


def normalise_fingerprint(text: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValidationError("invalid_fingerprint", "pubkey_fingerprint must be a string", field="pubkey_fingerprint")
    value = text.strip().lower()
    return value if value.startswith("sha256:") else "sha256:" + value


class Federation:
    def __init__(self, store: Store, identity: NodeIdentity, audit: AuditTrail, clock: Clock, lanes: Offload, *,
                 fetch_well_known: FetchWellKnown, leeway: timedelta,
                 max_declaration_age: timedelta = decl_mod.MAX_AGE) -> None:
        self.store = store
        self.lanes = lanes
        self.identity = identity
        self.audit = audit
        self.clock = clock
        self.fetch_well_known = fetch_well_known
        self.leeway = leeway
        self.max_declaration_age = max_declaration_age

    # -- lookups ---------------------------------------------------------------------
    def get(self, ref: str) -> PeerRecord:
        """A peer by peer_id or node_id."""
        peer = self.store.peers.get(ref) if isinstance(ref, str) and len(ref) == 36 else None
        peer = peer or (self.store.peers.by_node_id(ref) if isinstance(ref, str) else None)
        if peer is None:
            raise NotFound("peer_not_found", "no peer with this id")
        return peer

    def list_peers(self, status: str | None = None) -> builtins.list[PeerRecord]:
        return self.store.peers.list_peers(status)

    def views(self, peers: builtins.list[PeerRecord]) -> builtins.list[dict[str, Any]]:
        """Peer views with their replication status."""
        states = self.store.replication.all()
        empty = self.store.replication.get("")
        return [{**peer_view(p), "replication": replication_view(states.get(p.id, empty))} for p in peers]

    def history(self, peer: PeerRecord, limit: int = 200) -> builtins.list[dict[str, Any]]:
        return [entry_dict(r) for r in self.store.audit.page(peer_id=peer.id, limit=limit)]

    # -- registration ----------------------------------------------------------------
    async def register(self, body: Any, *, actor: Actor, scopes: tuple[str, ...] | None = None) -> PeerRecord:
        """Register a peer from its declaration.

        Malformed input raises ``ValidationError`` and an existing registration raises
        ``Conflict`` (nothing stored; the attempt is audited either way).  A well-formed
        declaration is stored as ``pending_approval`` when its signature, freshness and
        the peer's live well-known all agree, else as ``rejected`` with the reason.  A
        ``rejected`` record never blocks: a new declaration for the same node replaces it,
        so that nobody can squat a node id by posting a bad declaration for it.
        """
        decl, granted, reason = await self.lanes.write(self._admit, body, actor, scopes)
        fetch_error = None
        if reason is None:
            reason, fetch_error = await self._check_well_known(decl)
        return await self.lanes.write(self._store_registration, decl, granted, reason, fetch_error, actor)

    def _admit(self, body: Any, actor: Actor,
               scopes: tuple[str, ...] | None) -> tuple[decl_mod.Declaration, tuple[str, ...], str | None]:
        """Parse and check a declaration before the well-known fetch: the declaration, the
        granted scopes and the reason to reject it (None so far).  Refusals are audited."""
        try:
            decl = decl_mod.parse(body)
        except decl_mod.DeclarationRejected as exc:
            self._refused(actor, exc.reason, {"field": exc.field, "message": exc.message[:300]})
            raise ValidationError(exc.reason, exc.message, field=exc.field) from None
        detail = {"node_id": decl.node_id, "node_url": decl.node_url}
        if decl.node_id == self.identity.node_id:
            self._refused(actor, "cannot_peer_with_self", detail)
            raise ValidationError("cannot_peer_with_self", "a node cannot register itself as a peer", field="node_id")
        granted = tuple(sorted(set(decl.allowed_scopes) & set(FEDERATABLE_SCOPES) & set(scopes or FEDERATABLE_SCOPES)))
        if not granted:
            self._refused(actor, "no_shared_scopes", detail)
            raise ValidationError("no_shared_scopes",
                                  "the declaration and the allowed scopes share no federatable scope",
                                  field="allowed_scopes")
        self._refuse_existing(decl.node_id, actor)
        try:
            decl_mod.authenticate(decl, self.clock.now(), leeway=self.leeway, max_age=self.max_declaration_age)
        except decl_mod.DeclarationRejected as exc:
            return decl, granted, exc.reason
        return decl, granted, None

    def _store_registration(self, decl: decl_mod.Declaration, granted: tuple[str, ...], reason: str | None,
                            fetch_error: str | None, actor: Actor) -> PeerRecord:
        detail = {"node_id": decl.node_id, "node_url": decl.node_url}
        now = self.clock.now_iso()
        peer = PeerRecord(
            id=str(uuid.uuid4()), node_id=decl.node_id, node_url=decl.node_url,
            federation_pubkey=decl.federation_pubkey, allowed_scopes=granted, declaration=decl.as_dict(),
            signed_at=decl.signed_at, status="rejected" if reason else "pending_approval", reject_reason=reason,
            created_at=now, approved_at=None, approved_by=None, updated_at=now,
        )
        keys = [] if reason else [PeerKey(key_id_of(decl.federation_pubkey), decl.federation_pubkey, now, None)]
        try:
            with self.store.transaction():
                previous = self.store.peers.by_node_id(decl.node_id)
                if previous is not None and not self.store.peers.delete(previous.id, expected=("rejected",)):
                    raise IntegrityConflict("peer_already_registered", "a peer with this node id is already registered")
                self.store.peers.insert(peer, keys)
                self.audit.record(
                    ev.PEER_REGISTRATION_REJECTED if reason else ev.PEER_REGISTERED, peer_id=peer.id,
                    actor=actor.name, remote_addr=actor.remote_addr, reason=reason,
                    detail={**detail, "allowed_scopes": list(granted),
                            "pubkey_fingerprint": fingerprint(decl.federation_pubkey),
                            "replaces": previous.id if previous else None,
                            **({"fetch_error": fetch_error} if fetch_error else {})},
                )
        except IntegrityConflict:
            self._refuse_existing(decl.node_id, actor)
            raise
        return peer

    def _refused(self, actor: Actor, reason: str, detail: dict[str, Any], peer_id: str | None = None) -> None:
        self.audit.record(ev.PEER_REGISTRATION_REJECTED, peer_id=peer_id, actor=actor.name,
                          remote_addr=actor.remote_addr, reason=reason, detail=detail)

    def _refuse_existing(self, node_id: str, actor: Actor) -> None:
        existing = self.store.peers.by_node_id(node_id)
        if existing is not None and existing.status != "rejected":
            self._refused(actor, "peer_already_registered", {"node_id": node_id, "status": existing.status},
                          peer_id=existing.id)
            raise Conflict("peer_already_registered",
                           f"peer already registered (status={existing.status})",
                           peer_id=existing.id, status=existing.status)

    async def _check_well_known(self, decl: decl_mod.Declaration) -> tuple[str | None, str | None]:
        """(reason or None, the outbound error code when the fetch failed).  The caller
        learns only ``well_known_unreachable``; the audit row and the log say why."""
        try:
            doc = await self.fetch_well_known(decl.node_url)
        except OutboundError as exc:
            log.warning("registration of %s: cannot fetch its well-known: %s (%s)", ascii(decl.node_id[:80]),
                        exc.message, exc.code)
            return WELL_KNOWN_UNREACHABLE, exc.code
        if doc.get("node_id") != decl.node_id:
            return WELL_KNOWN_NODE_ID_MISMATCH, None
        if not isinstance(doc.get("federation_pubkey"), str) or not hmac.compare_digest(
            doc["federation_pubkey"].encode("utf-8", "replace"), decl.federation_pubkey.encode("utf-8", "replace")
        ):
            return WELL_KNOWN_PUBKEY_MISMATCH, None
        return None, None

    # -- key rotation -------------------------------------------------------------------
    async def refresh_peer_keys(self, peer: PeerRecord, *, actor: str = "node:refresh",
                                audit_gate: UnauthenticatedAuditGate | None = None) -> KeyRefresh:
        """Fetch the peer's well-known and adopt a rotated key if a chain of endorsements
        links it to a key we pinned (see docs/protocol.md, key rotation).

        Returns ``KeyRefresh.ROTATED`` if a new key was adopted, else why not (``key_unchanged``,
        ``well_known_unreachable``, ``well_known_node_id_mismatch``, ``rotation_not_endorsed``).
        An adopted or refused rotation is audited; a refusal within ``audit_gate``'s budgets
        when the refresh was caused by unauthenticated traffic (a failing token).
        """
        try:
            doc = await self.fetch_well_known(peer.node_url)
        except OutboundError as exc:
            log.warning("key refresh of %s: cannot fetch its well-known: %s (%s)", ascii(peer.node_id[:80]),
                        exc.message, exc.code)
            return KeyRefresh.WELL_KNOWN_UNREACHABLE
        if doc.get("node_id") != peer.node_id:
            return KeyRefresh.WELL_KNOWN_NODE_ID_MISMATCH
        new_pub, new_kid = doc.get("federation_pubkey"), doc.get("key_id")
        now = self.clock.now()
        pinned = [k for k in await self.lanes.read(self.store.peers.keys, peer.id)
                  if not (k.retire_after and parse_rfc3339(k.retire_after) <= now)]
        if not isinstance(new_pub, str) or any(k.public_key == new_pub for k in pinned):
            return KeyRefresh.UNCHANGED
        chain = _endorsement_chain(peer.node_id, doc, {k.public_key for k in pinned})
        if chain is None:
            extra = audit_gate.admit("refresh", peer.node_id) if audit_gate is not None else {}
            if extra is not None:
                await self.lanes.write(
                    self.audit.record, ev.PEER_KEY_ROTATION_REFUSED, peer_id=peer.id, actor=actor,
                    reason="rotation_not_endorsed",
                    detail={"node_id": peer.node_id, "offered_fingerprint": fingerprint(new_pub), **extra})
            return KeyRefresh.NOT_ENDORSED
        try:
            kid = key_id_of(new_pub)
        except ValueError:
            return KeyRefresh.NOT_ENDORSED
        await self.lanes.write(self._adopt_key, peer, kid, new_pub, new_kid, chain, pinned, now, actor)
        return KeyRefresh.ROTATED

    def _adopt_key(self, peer: PeerRecord, kid: str, new_pub: str, new_kid: Any, chain: list[tuple[str, Any]],
                   pinned: builtins.list[PeerKey], now: datetime, actor: str) -> None:
        stamp = self.clock.now_iso()
        with self.store.transaction():
            self.store.peers.add_key(peer.id, PeerKey(kid, new_pub, stamp, None))
            for old_pub, retire_after in chain:
                old = next((k for k in pinned if k.public_key == old_pub), None)
                if old is not None:
                    self.store.peers.retire_key(peer.id, old.key_id, _bounded(retire_after, now))
            self.store.peers.set_pubkey(peer.id, new_pub, stamp)
            self.audit.record(ev.PEER_KEY_ROTATED, peer_id=peer.id, actor=actor,
                              detail={"node_id": peer.node_id, "key_id": kid, "declared_key_id": new_kid,
                                      "pubkey_fingerprint": fingerprint(new_pub)})

    # -- operator actions ---------------------------------------------------------------
    def approve(self, ref: str, pubkey_fingerprint: Any, *, actor: Actor) -> PeerRecord:
        given = normalise_fingerprint(pubkey_fingerprint)
        peer = self.get(ref)
        if peer.status != "pending_approval":
            raise Conflict("peer_not_pending", f"peer is not pending approval (status={peer.status})",
                           status=peer.status)
        expected = fingerprint(peer.federation_pubkey)
        if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("ascii")):
            self.audit.record(ev.PEER_APPROVAL_FAILED, peer_id=peer.id, actor=actor.name,
                              remote_addr=actor.remote_addr, reason="fingerprint_mismatch",
                              detail={"node_id": peer.node_id, "given": given[:80]})
            raise ValidationError("fingerprint_mismatch", "the fingerprint does not match the peer's key",
                                  field="pubkey_fingerprint")
        return self._transition(peer, ("pending_approval",), "active", ev.PEER_APPROVED, actor, approving=True)

    def suspend(self, ref: str, *, actor: Actor, reason: str | None = None) -> PeerRecord:
        return self._transition(self.get(ref), ("active",), "suspended", ev.PEER_SUSPENDED, actor, reason=reason)

    def resume(self, ref: str, *, actor: Actor, reason: str | None = None) -> PeerRecord:
        return self._transition(self.get(ref), ("suspended",), "active", ev.PEER_RESUMED, actor, reason=reason)

    def revoke(self, ref: str, *, actor: Actor, reason: str | None = None) -> PeerRecord:
        return self._transition(self.get(ref), ("pending_approval", "active", "suspended"), "revoked",
                                ev.PEER_REVOKED, actor, reason=reason)

    def remove(self, ref: str, *, actor: Actor, reason: str | None = None) -> PeerRecord:
        peer = self.get(ref)
        with self.store.transaction():
            if not self.store.peers.delete(peer.id, expected=("rejected", "revoked")):
                raise Conflict("peer_status_conflict",
                               f"only rejected or revoked peers can be removed (status={peer.status})",
                               status=peer.status)
            self.audit.record(ev.PEER_REMOVED, peer_id=peer.id, actor=actor.name, remote_addr=actor.remote_addr,
                              reason=reason, detail={"node_id": peer.node_id, "status": peer.status})
        return peer

    def _transition(self, peer: PeerRecord, expected: tuple[str, ...], status: str, event: str, actor: Actor, *,
                    reason: str | None = None, approving: bool = False) -> PeerRecord:
        now = self.clock.now_iso()
        with self.store.transaction():
            changed = self.store.peers.set_status(
                peer.id, expected=expected, status=status, updated_at=now,
                approved_at=now if approving else None, approved_by=actor.name if approving else None,
            )
            if not changed:
                current = self.store.peers.get(peer.id)
                state = current.status if current else "removed"
                raise Conflict("peer_status_conflict", f"cannot move a peer from {state} to {status}", status=state)
            self.audit.record(event, peer_id=peer.id, actor=actor.name, remote_addr=actor.remote_addr, reason=reason,
                              detail={"node_id": peer.node_id, "from": peer.status, "to": status})
        return self.store.peers.get(peer.id)  # type: ignore[return-value]


MAX_KEY_GRACE = timedelta(days=30)


def _bounded(retire_after: Any, now: datetime) -> str:
    """A peer's announced retire_after for its old key, within [now, now + 30 days]."""
    try:
        when = parse_rfc3339(retire_after)
    except ValueError:
        when = now
    return iso(min(max(when, now), now + MAX_KEY_GRACE))


def _endorsement_chain(node_id: str, doc: dict[str, Any], trusted: set[str]) -> list[tuple[str, Any]] | None:
    """Walk ``previous_keys`` endorsements from a trusted key to the well-known's current key.

    Returns the (public key, retire_after) of each past key on the way, or None when no
    chain of valid endorsements reaches the current key.
    """
    current_pub, current_kid = doc.get("federation_pubkey"), doc.get("key_id")
    past = doc.get("previous_keys")
    if not isinstance(past, list) or not isinstance(current_pub, str):
        return None
    by_kid = {e["key_id"]: e for e in past[:64] if isinstance(e, dict) and isinstance(e.get("key_id"), str)}

    def pub_of(kid: Any) -> str | None:
        if not isinstance(kid, str):
            return None
        if kid == current_kid:
            return current_pub
        entry = by_kid.get(kid)
        return entry.get("federation_pubkey") if entry and isinstance(entry.get("federation_pubkey"), str) else None

    reached = set(trusted)
    path: list[tuple[str, Any]] = []
    changed = True
    while changed and current_pub not in reached:
        changed = False
        for entry in by_kid.values():
            signer, successor = entry.get("federation_pubkey"), pub_of(entry.get("endorses"))
            if not isinstance(signer, str) or not isinstance(successor, str) or signer not in reached \
                    or successor in reached:
                continue
            try:
                key = public_key_from_b64(signer)
                key.verify(b64url_decode(entry.get("endorsement") or ""),
                           endorsement_payload(node_id, entry["endorses"], successor))
            except (ValueError, TypeError, InvalidSignature):
                continue
            reached.add(successor)
            path.append((signer, entry.get("retire_after")))
            changed = True
    return path if current_pub in reached else None
