"""Anchors: the head of the audit trail, signed by the node key, kept off the host.

Signed checkpoints (``audit.py``) catch a chain re-hashed without the private key, but
the key lives in the same database: whoever holds the file can re-sign, or delete the
newest rows.  An anchor is a small JSON document, the trail's current head (seq and
hash) with the time, node id and key, signed by the node key.  Shipped somewhere the
node cannot write, it lets ``audit verify --anchor FILE`` prove later that the trail
still holds that exact row: a truncation or rewrite after the anchor is detected even by
someone who had the key.

Everything here only reads the database (``store.readonly``): anchoring and verifying
never write, never migrate, never create an identity or a pepper file.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from stigmem_node.audit import GENESIS
from stigmem_node.audit_verify import VerifyReport, kind_of, node_keys, stored_node_id, verify_chain, verify_signature
from stigmem_node.clock import Clock
from stigmem_node.encoding import b64url_encode, sorted_json
from stigmem_node.errors import ConfigError
from stigmem_node.identity import load_existing
from stigmem_node.store.audit import AuditRepo
from stigmem_node.store.meta import MetaRepo
from stigmem_node.store.readonly import ReadOnlyDatabase, open_read_only

ANCHOR_TYPE = "stigmem-audit-anchor"  # the domain of anchor signatures
ANCHOR_FIELDS = {"type": str, "v": int, "node_id": str, "key_id": str, "public_key": str, "seq": int, "hash": str,
                 "time": str, "sig": str}
MAX_ANCHOR_BYTES = 64 * 1024


class AnchorRefused(Exception):
    """The anchor document is not a valid anchor of this node."""


def anchor_payload(anchor: dict[str, Any]) -> bytes:
    """The bytes an anchor signs: every field but ``sig``, as canonical JSON."""
    return sorted_json({k: anchor[k] for k in ANCHOR_FIELDS if k != "sig"})


def make_anchor(db: ReadOnlyDatabase, clock: Clock) -> dict[str, Any]:
    """The signed head of the trail in ``db`` (read only, one snapshot)."""
    with db.snapshot():
        try:
            ident = load_existing(MetaRepo(db), clock)
        except (ValueError, TypeError):
            raise ConfigError("database_unavailable", "the node's signing key cannot be read") from None
        if ident is None:
            raise ConfigError("database_unavailable", "this database has no node identity to sign an anchor with")
        head = AuditRepo(db).head()
    seq, digest = (head[0], head[1]) if head else (0, GENESIS)
    if not isinstance(digest, str):
        raise ConfigError("database_unavailable", f"the newest audit row's hash is {kind_of(digest)}; "
                          "run 'stigmem-node audit verify'")
    anchor = {"type": ANCHOR_TYPE, "v": 1, "node_id": ident.node_id, "key_id": ident.key_id,
              "public_key": ident.public_key, "seq": seq, "hash": digest, "time": clock.now_iso()}
    anchor["sig"] = b64url_encode(ident.sign(anchor_payload(anchor)))
    return anchor


def parse_anchor(text: str) -> dict[str, Any]:
    """The anchor in ``text``, shape-checked.  Raises ``AnchorRefused``."""
    try:
        anchor = json.loads(text)
    except (ValueError, RecursionError):
        raise AnchorRefused("the anchor file is not JSON") from None
    if not isinstance(anchor, dict) or set(anchor) != set(ANCHOR_FIELDS):
        raise AnchorRefused(f"an anchor is a JSON object with exactly the fields {', '.join(sorted(ANCHOR_FIELDS))}")
    for name, typ in ANCHOR_FIELDS.items():
        if not isinstance(anchor[name], typ) or isinstance(anchor[name], bool):
            raise AnchorRefused(f"the anchor's {name} is {kind_of(anchor[name])}")
    if anchor["type"] != ANCHOR_TYPE or anchor["v"] != 1:
        raise AnchorRefused(f"not an audit anchor (type {anchor['type'][:64]!r}, version {anchor['v']})")
    if anchor["seq"] < 0:
        raise AnchorRefused("the anchor's seq is negative")
    return anchor


def check_anchor_signature(anchor: dict[str, Any], db: Any) -> None:
    """The anchor is this node's and signed by one of its keys.  Raises ``AnchorRefused``."""
    node_id = stored_node_id(db)
    if anchor["node_id"] != node_id:
        raise AnchorRefused(f"the anchor is for node {anchor['node_id'][:256]!r}, this database is node {node_id!r}")
    keys = node_keys(db)
    key = keys.get(anchor["key_id"])
    stored = db.one("SELECT public_key FROM node_keys WHERE key_id = ?", (anchor["key_id"],))
    if key is None or stored is None or stored[0] != anchor["public_key"]:
        raise AnchorRefused(f"the anchor is signed by key {anchor['key_id'][:64]!r}, which is not one of this "
                            "node's keys")
    if not verify_signature(key, anchor["sig"], anchor_payload(anchor)):
        raise AnchorRefused("the anchor's signature does not verify (the anchor was altered or forged)")


def _holds(anchor: dict[str, Any], db: Any) -> str | None:
    """None if the trail still holds the anchored row with the anchored hash, else why not."""
    seq, when = anchor["seq"], anchor["time"][:40]
    if seq == 0:
        return None if anchor["hash"] == GENESIS else "the anchor of an empty trail must name the genesis hash"
    row = AuditRepo(db).by_seq(seq)
    if row is None:
        return (f"the trail no longer holds row {seq}, the head anchored at {when}: rows were deleted after "
                "the anchor was taken")
    if row.hash != anchor["hash"]:
        return (f"row {seq} no longer has the hash anchored at {when}: the trail was rewritten or re-hashed "
                "after the anchor was taken")
    return None


def verify_with_anchor(db: ReadOnlyDatabase, anchor: dict[str, Any] | None, *, checkpoint_rows: int) -> VerifyReport:
    """``verify_chain``, and if an anchor is given, its signature and that the trail still holds it.

    Everything is read in one snapshot: rows another process appends meanwhile are not
    seen, so they cannot look like deleted or unsealed rows."""
    with db.snapshot():
        return _verify_with_anchor(db, anchor, checkpoint_rows=checkpoint_rows)


def _verify_with_anchor(db: Any, anchor: dict[str, Any] | None, *, checkpoint_rows: int) -> VerifyReport:
    summary = None
    if anchor is not None:
        summary = {"seq": anchor["seq"], "hash": anchor["hash"], "time": anchor["time"], "key_id": anchor["key_id"]}
        try:
            check_anchor_signature(anchor, db)
        except AnchorRefused as exc:
            return VerifyReport(False, 0, None, f"anchor refused: {exc}", 0, summary)
    report = verify_chain(db, checkpoint_rows=checkpoint_rows)
    if anchor is None:
        return report
    problem = _holds(anchor, db)
    if problem is not None and (report.ok or report.first_bad_seq is None or anchor["seq"] <= report.first_bad_seq):
        return VerifyReport(False, report.rows, anchor["seq"], problem, report.checkpoints, summary)
    return VerifyReport(report.ok, report.rows, report.first_bad_seq, report.problem, report.checkpoints, summary)


def read_anchor_file(path: str) -> str:
    try:
        if path == "-":
            text = sys.stdin.read(MAX_ANCHOR_BYTES + 1)
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read(MAX_ANCHOR_BYTES + 1)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(message=f"cannot read the anchor file {path}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    if len(text) > MAX_ANCHOR_BYTES:
        raise ConfigError(message=f"the anchor file {path} is larger than {MAX_ANCHOR_BYTES} bytes")
    return text


def verify_database(db_path: Path | str, *, checkpoint_rows: int, anchor_file: str | None = None) -> VerifyReport:
    """``audit verify [--anchor FILE]``: read only, from start to end."""
    anchor = None
    if anchor_file is not None:
        try:
            anchor = parse_anchor(read_anchor_file(anchor_file))
        except AnchorRefused as exc:
            return VerifyReport(False, 0, None, f"anchor refused: {exc}")
    report = None
    for _ in range(3):
        with open_read_only(db_path) as db:
            report = verify_with_anchor(db, anchor, checkpoint_rows=checkpoint_rows)
            if not db.changed():  # a server started writing while we read the file as immutable
                break
    return report  # type: ignore[return-value]


def anchor_database(db_path: Path | str, clock: Clock) -> dict[str, Any]:
    """``audit anchor``: the signed head, read only."""
    with open_read_only(db_path) as db:
        return make_anchor(db, clock)


def write_anchor(anchor: dict[str, Any], out: str | None) -> None:
    """Print the anchor, or replace ``out`` with it atomically (a reader never sees half)."""
    text = json.dumps(anchor, sort_keys=True) + "\n"
    if out is None or out == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = Path(out)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent if str(target.parent) else ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise ConfigError(message=f"cannot write the anchor to {out}: {exc.strerror or exc}") from None
