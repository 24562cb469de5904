"""Check an audit trail: the hash chain, the signed checkpoints, and what was deleted.

Works on any database object with ``one``/``all`` (the live ``Database`` or a
``ReadOnlyDatabase``) and only reads.  Every value is type-checked before use, so a
tampered row of any type (a BLOB, a number, NULL, text that is not UTF-8) is reported as
a broken row, never an exception.

What a report of ``ok`` means: rows 1..N are all present, each links to the one before
and matches its hash; every ``audit_checkpoint`` row seals the row before it, names the
previous checkpoint, and carries a valid Ed25519 signature by one of the node's keys
(retired ones included); no rows after the newest were deleted (``sqlite_sequence``); and
at most ``checkpoint_rows`` rows follow the newest checkpoint.  A chain re-hashed without
the private key fails at its first checkpoint; one re-hashed without its checkpoints fails
the last rule once it has more than ``checkpoint_rows`` rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from stigmem_node.audit import AUDIT_CHECKPOINT, GENESIS, checkpoint_payload, row_hash
from stigmem_node.encoding import b64url_decode
from stigmem_node.keys import public_key_from_b64
from stigmem_node.store.audit import AuditRepo, AuditRow
from stigmem_node.store.db import StorageError

TEXT_COLUMNS = ("ts", "event_type", "detail", "prev_hash", "hash")
NULLABLE_COLUMNS = ("peer_id", "actor", "reason", "remote_addr")
CHECKPOINT_FIELDS = {"v": int, "node_id": str, "key_id": str, "seq": int, "hash": str, "prev_checkpoint": int,
                     "sig": str}


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    rows: int
    first_bad_seq: int | None = None
    problem: str | None = None
    checkpoints: int = 0
    anchor: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": self.rows, "first_bad_seq": self.first_bad_seq, "problem": self.problem,
                "checkpoints": self.checkpoints, "anchor": self.anchor}

    def human(self) -> str:
        if self.ok:
            text = (f"Audit trail intact: {self.rows} rows, every link verified, "
                    f"{self.checkpoints} signed checkpoint(s).")
            if self.anchor:
                text += f" It still holds the anchor of {self.anchor['time']} (row {self.anchor['seq']})."
            return text
        if self.first_bad_seq is None:
            return f"Audit trail NOT verified: {self.problem}."
        return f"Audit trail BROKEN at row {self.first_bad_seq}: {self.problem}."


def kind_of(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "a BLOB (or text that is not UTF-8)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a real number"
    return f"a {type(value).__name__}"


def _type_problem(row: AuditRow) -> str | None:
    for name in TEXT_COLUMNS:
        value = getattr(row, name)
        if not isinstance(value, str):
            return f"column {name} holds {kind_of(value)} where text is expected"
    for name in NULLABLE_COLUMNS:
        value = getattr(row, name)
        if value is not None and not isinstance(value, str):
            return f"column {name} holds {kind_of(value)} where text or NULL is expected"
    return None


def node_keys(db: Any) -> dict[str, Ed25519PublicKey]:
    """Every key this node has had (active, retiring, retired), by key id."""
    keys: dict[str, Ed25519PublicKey] = {}
    for key_id, public_key in db.all("SELECT key_id, public_key FROM node_keys"):
        if isinstance(key_id, str) and isinstance(public_key, str):
            try:
                keys[key_id] = public_key_from_b64(public_key)
            except ValueError:
                continue
    return keys


def stored_node_id(db: Any) -> str | None:
    row = db.one("SELECT value FROM node_meta WHERE key = 'node_id'")
    return row[0] if row and isinstance(row[0], str) else None


def verify_signature(key: Ed25519PublicKey, sig_text: str, payload: bytes) -> bool:
    try:
        key.verify(b64url_decode(sig_text), payload)
    except (ValueError, InvalidSignature):
        return False
    return True


def _checkpoint_problem(row: AuditRow, node_id: str | None, keys: dict[str, Ed25519PublicKey],
                        last_checkpoint: int) -> str | None:
    try:
        detail = json.loads(row.detail)
    except (ValueError, RecursionError):
        return "the checkpoint's detail is not JSON"
    if not isinstance(detail, dict) or set(detail) != set(CHECKPOINT_FIELDS):
        return f"the checkpoint's detail must have exactly the fields {', '.join(sorted(CHECKPOINT_FIELDS))}"
    for name, typ in CHECKPOINT_FIELDS.items():
        if not isinstance(detail[name], typ) or isinstance(detail[name], bool):
            return f"the checkpoint's {name} is {kind_of(detail[name])}"
    if detail["v"] != 1:
        return f"unknown checkpoint version {detail['v']}"
    if detail["seq"] != row.seq - 1 or detail["hash"] != row.prev_hash:
        return "the checkpoint does not seal the row before it (the chain was re-hashed)"
    if detail["prev_checkpoint"] != last_checkpoint:
        return (f"the checkpoint names row {detail['prev_checkpoint']} as the previous checkpoint, but that is "
                f"row {last_checkpoint} (a checkpoint was removed)")
    if node_id is None or detail["node_id"] != node_id:
        return "the checkpoint was made by another node"
    key = keys.get(detail["key_id"])
    if key is None:
        return f"the checkpoint is signed by key {detail['key_id'][:64]!r}, which is not one of this node's keys"
    payload = checkpoint_payload(node_id=detail["node_id"], key_id=detail["key_id"], seq=detail["seq"],
                                 hash=detail["hash"], prev_checkpoint=detail["prev_checkpoint"], ts=row.ts)
    if not verify_signature(key, detail["sig"], payload):
        return "the checkpoint's signature does not verify (the chain was re-hashed, or the checkpoint forged)"
    return None


def verify_chain(db: Any, *, checkpoint_rows: int) -> VerifyReport:
    """Walk the whole trail in seq order and report the first problem (see the module docstring)."""
    repo = AuditRepo(db)
    prev, expected, count, checkpoints, last_checkpoint = GENESIS, 1, 0, 0, 0
    try:
        node_id, keys = stored_node_id(db), node_keys(db)
        for row in repo.iter_all():
            count += 1
            if row.seq != expected:
                return VerifyReport(False, count, expected, f"row {expected} is missing", checkpoints)
            problem = _type_problem(row)
            if problem is None and row.prev_hash != prev:
                problem = "link to the previous row is broken"
            if problem is None and row_hash(prev, row.ts, row.event_type, row.peer_id, row.actor, row.reason,
                                            row.detail, row.remote_addr) != row.hash:
                problem = "row content does not match its hash"
            if problem is None and row.event_type == AUDIT_CHECKPOINT:
                problem = _checkpoint_problem(row, node_id, keys, last_checkpoint)
                if problem is None:
                    checkpoints, last_checkpoint = checkpoints + 1, row.seq
            if problem is not None:
                return VerifyReport(False, count, row.seq, problem, checkpoints)
            prev = row.hash
            expected += 1
        issued = repo.highest_seq_issued_raw()
    except StorageError as exc:
        return VerifyReport(False, count, expected, f"the database cannot be read from here on ({exc})", checkpoints)
    if not isinstance(issued, int) or isinstance(issued, bool):
        return VerifyReport(False, count, expected, f"sqlite_sequence holds {kind_of(issued)} for audit_log",
                            checkpoints)
    if issued >= expected:
        return VerifyReport(False, count, expected, f"rows {expected}..{issued} were deleted", checkpoints)
    newest = expected - 1
    if newest - last_checkpoint > checkpoint_rows:
        return VerifyReport(False, count, last_checkpoint + checkpoint_rows + 1,
                            f"rows {last_checkpoint + 1}..{newest} are not sealed by a signed checkpoint (at most "
                            f"{checkpoint_rows} may follow the newest one): checkpoints were removed", checkpoints)
    return VerifyReport(True, count, checkpoints=checkpoints)
