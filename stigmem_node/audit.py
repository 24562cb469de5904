"""The audit trail: append-only, hash-chained, and sealed by signed checkpoints.

Each row's ``hash`` is SHA-256 over the previous row's hash and the row's canonical
content, so editing any row breaks its own hash and deleting one breaks the link of the
next.  Deleting the newest rows is caught by comparing against the highest sequence
number SQLite ever issued.  ``record`` joins the caller's transaction, so a state
change and its audit row commit together.

A hash chain has no secret: whoever can write the table can recompute every hash.  So
every ``checkpoint_rows`` rows (appended by ``record`` in the same transaction, by every
writer, CLI included) and when a row has waited ``checkpoint_interval_s`` unsealed (the
serving node's schedule), an ``audit_checkpoint`` row is appended whose detail carries
an Ed25519 signature by the node key over the seq and hash of the row it seals.  A
re-hashed chain then no longer matches its signed checkpoints (``audit_verify``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from stigmem_node.clock import Clock, parse_rfc3339
from stigmem_node.encoding import b64url_encode, sha256_hex, sorted_json
from stigmem_node.store.audit import AuditRepo, AuditRow

if TYPE_CHECKING:
    from stigmem_node.audit_verify import VerifyReport

GENESIS = "0" * 64

# Event types (stable; docs/protocol.md lists them).
PEER_REGISTERED = "peer_registered"
PEER_REGISTRATION_REJECTED = "peer_registration_rejected"
PEER_APPROVED = "peer_approved"
PEER_APPROVAL_FAILED = "peer_approval_failed"
PEER_SUSPENDED = "peer_suspended"
PEER_RESUMED = "peer_resumed"
PEER_REVOKED = "peer_revoked"
PEER_REMOVED = "peer_removed"
APIKEY_CREATED = "apikey_created"
APIKEY_REVOKED = "apikey_revoked"
APIKEY_AUTH_THROTTLED = "apikey_auth_throttled"
APIKEY_REFUSED = "apikey_refused"
KEY_ROTATED = "key_rotated"
PEER_KEY_ROTATED = "peer_key_rotated"
PEER_KEY_ROTATION_REFUSED = "peer_key_rotation_refused"
AUDIT_CHECKPOINT = "audit_checkpoint"
FACT_ERASED = "fact_erased"

# The domain of checkpoint signatures: no other message the node key signs has this "type".
CHECKPOINT_TYPE = "stigmem-audit-checkpoint"
CHECKPOINT_ACTOR = "node"
DEFAULT_CHECKPOINT_ROWS = 1000


class Signer(Protocol):
    node_id: str
    key_id: str

    def sign(self, message: bytes) -> bytes: ...


def checkpoint_payload(*, node_id: str, key_id: str, seq: int, hash: str,  # noqa: A002 - the row's field
                       prev_checkpoint: int, ts: str) -> bytes:
    """The bytes a checkpoint signs: the sealed row's seq and hash, the previous
    checkpoint's seq (0 for the first), the checkpoint row's own ts, node and key."""
    return sorted_json({"type": CHECKPOINT_TYPE, "v": 1, "node_id": node_id, "key_id": key_id, "seq": seq,
                        "hash": hash, "prev_checkpoint": prev_checkpoint, "ts": ts})


def detail_text(detail: dict[str, Any]) -> str:
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_hash(prev_hash: str, ts: str, event_type: str, peer_id: str | None, actor: str | None,
             reason: str | None, detail: str, remote_addr: str | None) -> str:
    content = sorted_json({
        "actor": actor, "detail": detail, "event_type": event_type, "peer_id": peer_id,
        "reason": reason, "remote_addr": remote_addr, "ts": ts,
    })
    return sha256_hex(prev_hash.encode("ascii") + b"\n" + content)


def entry_dict(row: AuditRow) -> dict[str, Any]:
    try:
        detail = json.loads(row.detail)
    except ValueError:
        detail = row.detail
    return {
        "seq": row.seq, "id": row.seq, "ts": row.ts, "event_type": row.event_type, "peer_id": row.peer_id,
        "actor": row.actor, "reason": row.reason, "detail": detail, "remote_addr": row.remote_addr,
        "hash": row.hash,
    }


class AuditTrail:
    def __init__(self, repo: AuditRepo, clock: Clock, *, signer: Callable[[], Signer] | None = None,
                 checkpoint_rows: int = DEFAULT_CHECKPOINT_ROWS) -> None:
        """``signer`` returns the node identity that signs checkpoints (None: no checkpoints)."""
        self.repo = repo
        self.clock = clock
        self.signer = signer
        self.checkpoint_rows = checkpoint_rows

    def record(self, event_type: str, *, peer_id: str | None = None, actor: str | None = None,
               reason: str | None = None, detail: dict[str, Any] | None = None,
               remote_addr: str | None = None) -> int:
        text = detail_text(detail or {})
        with self.repo.db.transaction():
            head = self.repo.head()
            prev = head[1] if head else GENESIS
            ts = self.clock.now_iso()
            digest = row_hash(prev, ts, event_type, peer_id, actor, reason, text, remote_addr)
            seq = self.repo.insert(AuditRow(0, ts, event_type, peer_id, actor, reason, text, remote_addr, prev, digest))
            if self.signer is not None and seq - self.repo.last_seq_of(AUDIT_CHECKPOINT) >= self.checkpoint_rows:
                self._checkpoint(seq, digest, "rows")
            return seq

    def checkpoint_if_due(self, max_unsealed_s: float) -> int | None:
        """Seal the newest row if the oldest row not yet sealed is ``max_unsealed_s`` old.

        Returns the checkpoint's seq, or None if nothing was due (no rows, the newest row is
        a checkpoint, or the unsealed rows are younger)."""
        if self.signer is None:
            return None
        with self.repo.db.transaction():
            head = self.repo.head()
            if head is None or head[2] == AUDIT_CHECKPOINT:
                return None
            first_ts = self.repo.ts_after(self.repo.last_seq_of(AUDIT_CHECKPOINT))
            try:
                age = (self.clock.now() - parse_rfc3339(first_ts)).total_seconds() if first_ts else math.inf
            except (ValueError, TypeError):
                age = math.inf  # an unreadable time: seal now
            if age < max_unsealed_s:
                return None
            return self._checkpoint(head[0], head[1], "time")

    def _checkpoint(self, seq: int, digest: str, trigger: str) -> int:
        """Append a signed checkpoint sealing row ``seq`` (whose hash is ``digest``).
        Runs inside the caller's transaction."""
        signer = self.signer()  # type: ignore[misc]
        prev_checkpoint = self.repo.last_seq_of(AUDIT_CHECKPOINT)
        ts = self.clock.now_iso()
        payload = checkpoint_payload(node_id=signer.node_id, key_id=signer.key_id, seq=seq, hash=digest,
                                     prev_checkpoint=prev_checkpoint, ts=ts)
        text = detail_text({"v": 1, "node_id": signer.node_id, "key_id": signer.key_id, "seq": seq, "hash": digest,
                            "prev_checkpoint": prev_checkpoint, "sig": b64url_encode(signer.sign(payload))})
        row_digest = row_hash(digest, ts, AUDIT_CHECKPOINT, None, CHECKPOINT_ACTOR, trigger, text, None)
        return self.repo.insert(AuditRow(0, ts, AUDIT_CHECKPOINT, None, CHECKPOINT_ACTOR, trigger, text, None, digest,
                                         row_digest))

    def verify(self) -> VerifyReport:
        """Check the chain and its checkpoints on this (live) database; see ``audit_verify``."""
        from stigmem_node.audit_verify import verify_chain

        return verify_chain(self.repo.db, checkpoint_rows=self.checkpoint_rows)
