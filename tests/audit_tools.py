"""Helpers for audit-trail tests: build a real trail, tamper with it as an attacker would.

The attacker here has write access to the database (the file on SQLite, a superuser on
PostgreSQL) but does not use the node's private key: it edits rows and recomputes the chain
with the public algorithm (``stigmem_node.audit.row_hash``).  A database is named by its
target: a SQLite path or a PostgreSQL URL (``Engine.target``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stigmem_node.audit import row_hash
from stigmem_node.config import Settings
from stigmem_node.node import Node
from tests.engines import cli_kw, connect, is_postgres, provide_pepper, stored_bytes, tampering
from tests.nodes import run_cli

COLS = ("seq", "ts", "event_type", "peer_id", "actor", "reason", "detail", "remote_addr", "prev_hash", "hash")


def make_trail(db: Path, rows: int, every: int, database_url: str | None = None) -> str:
    """A real node database whose audit trail has ``rows`` ordinary rows (and a signed
    checkpoint after every ``every`` of them).  Returns the node id."""
    on_postgres = {"database_url": database_url} if database_url else {}
    if database_url:
        provide_pepper(db)
    node = Node(Settings(db_path=db, audit_checkpoint_rows=every, **on_postgres))
    try:
        node.first_admin_key()
        for i in range(rows - 1):
            node.audit.record("apikey_revoked", actor="cli:test", remote_addr="local", detail={"id": f"key-{i}"})
        return node.identity.node_id
    finally:
        node.close()


def cli_env(every: int) -> dict[str, str]:
    return {"STIGMEM_AUDIT_CHECKPOINT_ROWS": str(every)}


def verify(db: Path | str, *args: str, every: int) -> tuple[int, dict[str, Any], str]:
    """`audit verify --json` (and the human form): exit code, report, human line."""
    res = run_cli("audit", "verify", "--json", *args, **cli_kw(db), env=cli_env(every))
    assert "Traceback" not in res.stderr and res.stderr == "", res.stderr
    human = run_cli("audit", "verify", *args, **cli_kw(db), env=cli_env(every))
    assert human.returncode == res.returncode and human.stderr == "", human.stderr
    lines = human.stdout.strip().splitlines()
    assert len(lines) == 1, human.stdout
    return res.returncode, json.loads(res.stdout), lines[0]


def read_rows(db: Path | str) -> list[dict[str, Any]]:
    with connect(db) as conn:
        return [dict(zip(COLS, r)) for r in conn.execute(f"SELECT {', '.join(COLS)} FROM audit_log ORDER BY seq")]


def set_sequence(conn: Any, table: str, top: int) -> None:
    """Make the engine's record of the highest seq ever issued for ``table`` say ``top``
    (sqlite_sequence on SQLite; the table's sequence on PostgreSQL)."""
    if conn.postgres:
        conn.execute(f"SELECT setval('{table}_seq', ?, ?)", (max(top, 1), top > 0))
    else:
        conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (top, table))


def write_rows(db: Path | str, rows: list[dict[str, Any]], *, sequence: int | None = None) -> None:
    """Replace the whole table (and set the engine's sequence, so that no deletion shows)."""
    with tampering(db) as conn:
        conn.execute("DELETE FROM audit_log")
        conn.executemany(f"INSERT INTO audit_log ({', '.join(COLS)}) VALUES ({', '.join('?' * len(COLS))})",
                         [tuple(r[c] for c in COLS) for r in rows])
        top = sequence if sequence is not None else (rows[-1]["seq"] if rows else 0)
        set_sequence(conn, "audit_log", top)


def rehash(db: Path | str, *, edit: Callable[[dict], None] | None = None, patch_checkpoints: bool = False,
           drop_checkpoints: bool = False) -> list[dict[str, Any]]:
    """Rewrite the chain with the public algorithm, without the private key.

    ``edit`` changes the rows (e.g. a forged actor); ``drop_checkpoints`` removes the
    checkpoint rows and renumbers the rest; ``patch_checkpoints`` makes each checkpoint's
    detail name the new hash of the row it seals (its signature cannot follow)."""
    rows = read_rows(db)
    if drop_checkpoints:
        rows = [r for r in rows if r["event_type"] != "audit_checkpoint"]
        for i, r in enumerate(rows, 1):
            r["seq"] = i
    if edit is not None:
        for r in rows:
            edit(r)
    prev = "0" * 64
    for r in rows:
        if patch_checkpoints and r["event_type"] == "audit_checkpoint":
            detail = json.loads(r["detail"])
            detail.update(seq=r["seq"] - 1, hash=prev)
            r["detail"] = json.dumps(detail, sort_keys=True, separators=(",", ":"))
        r["prev_hash"] = prev
        r["hash"] = row_hash(prev, r["ts"], r["event_type"], r["peer_id"], r["actor"], r["reason"], r["detail"],
                             r["remote_addr"])
        prev = r["hash"]
    write_rows(db, rows)
    return rows


def truncate(db: Path | str, from_seq: int) -> None:
    """Delete rows from ``from_seq`` on and lower the sequence: no gap, no deletion shows."""
    rows = [r for r in read_rows(db) if r["seq"] < from_seq]
    write_rows(db, rows)


def fingerprint(db: Path | str) -> Any:
    """What shows whether a database changed: the file's hash, size, mtime and mode on
    SQLite; every row of every table on PostgreSQL."""
    if not is_postgres(db):
        return fingerprint_file(Path(db))
    return hashlib.sha256(stored_bytes(db)).hexdigest()


def fingerprint_file(path: Path) -> tuple[str, int, int, int]:
    """Content hash, size, mtime (ns) and mode of a file."""
    st = os.stat(path)
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns, st.st_mode
