"""The audit trail: append-only and hash-chained.

Each row's ``hash`` is SHA-256 over the previous row's hash and the row's canonical
content, so editing any row breaks its own hash and deleting one breaks the link of the
next.  Deleting the newest rows is caught by comparing against the highest sequence
number SQLite ever issued.  ``record`` joins the caller's transaction, so a state
change and its audit row commit together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from stigmem_node.clock import Clock
from stigmem_node.encoding import sha256_hex, sorted_json
from stigmem_node.store.audit import AuditRepo, AuditRow

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
KEY_ROTATED = "key_rotated"
PEER_KEY_ROTATED = "peer_key_rotated"
PEER_KEY_ROTATION_REFUSED = "peer_key_rotation_refused"


def row_hash(prev_hash: str, ts: str, event_type: str, peer_id: str | None, actor: str | None,
             reason: str | None, detail: str, remote_addr: str | None) -> str:
    content = sorted_json({
        "actor": actor, "detail": detail, "event_type": event_type, "peer_id": peer_id,
        "reason": reason, "remote_addr": remote_addr, "ts": ts,
    })
    return sha256_hex(prev_hash.encode("ascii") + b"\n" + content)


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    rows: int
    first_bad_seq: int | None = None
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": self.rows, "first_bad_seq": self.first_bad_seq, "problem": self.problem}


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
    def __init__(self, repo: AuditRepo, clock: Clock) -> None:
        self.repo = repo
        self.clock = clock

    def record(self, event_type: str, *, peer_id: str | None = None, actor: str | None = None,
               reason: str | None = None, detail: dict[str, Any] | None = None,
               remote_addr: str | None = None) -> int:
        detail_text = json.dumps(detail or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        with self.repo.db.transaction():
            prev = self.repo.last_hash() or GENESIS
            ts = self.clock.now_iso()
            digest = row_hash(prev, ts, event_type, peer_id, actor, reason, detail_text, remote_addr)
            return self.repo.insert(
                AuditRow(0, ts, event_type, peer_id, actor, reason, detail_text, remote_addr, prev, digest)
            )

    def verify(self) -> VerifyReport:
        prev = GENESIS
        expected_seq = 1
        count = 0
        for row in self.repo.iter_all():
            count += 1
            if row.seq != expected_seq:
                return VerifyReport(False, count, expected_seq, f"row {expected_seq} is missing")
            if row.prev_hash != prev:
                return VerifyReport(False, count, row.seq, "link to the previous row is broken")
            if row_hash(prev, row.ts, row.event_type, row.peer_id, row.actor, row.reason, row.detail,
                        row.remote_addr) != row.hash:
                return VerifyReport(False, count, row.seq, "row content does not match its hash")
            prev = row.hash
            expected_seq += 1
        issued = self.repo.highest_seq_issued()
        if issued >= expected_seq:
            return VerifyReport(False, count, expected_seq, f"rows {expected_seq}..{issued} were deleted")
        return VerifyReport(True, count)
