"""`audit verify` and `audit anchor` only read: no byte, mtime, side file or pepper changes,
on read-only copies as an unprivileged user too; tampered values of any type are broken
rows reported in one line, never a traceback.

SQLite by nature (``sqlite_only``): files, their bytes, modes and side files, rows only in the
WAL, SQLite's typeless columns and sqlite_sequence.  What of it holds on PostgreSQL too (verify
and anchor change no row) is the first test, which runs on both engines."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from stigmem_node.config import Settings
from stigmem_node.node import Node
from tests.audit_tools import cli_env, fingerprint, fingerprint_file, make_trail, read_rows, verify
from tests.engines import cli_kw
from tests.nodes import node_env, run_cli

pytestmark = pytest.mark.sqlite_only

EVERY = 5


def snapshot_dir(d: Path) -> dict[str, tuple]:
    return {p.name: fingerprint_file(p) for p in sorted(d.iterdir())}


@pytest.fixture
def copy(tmp_path) -> Path:
    """A node database alone in its own folder (no pepper file, no -wal/-shm)."""
    make_trail(tmp_path / "orig.db", rows=12, every=EVERY)
    (tmp_path / "copy").mkdir()
    dest = tmp_path / "copy" / "node.db"
    shutil.copyfile(tmp_path / "orig.db", dest)
    return dest


@pytest.mark.sqlite_only(False)
def test_verify_and_anchor_change_no_row_on_either_engine(tmp_path, engine):
    db = tmp_path / "node.db"
    make_trail(db, rows=12, every=EVERY, database_url=engine.url("node"))
    target = engine.target(db)
    before = fingerprint(target)
    assert verify(target, every=EVERY)[0] == 0
    out = tmp_path / "anchor.json"
    assert run_cli("audit", "anchor", "--out", str(out), **cli_kw(target)).returncode == 0
    assert verify(target, "--anchor", str(out), every=EVERY)[0] == 0
    out.write_text(json.dumps({**json.loads(out.read_text()), "seq": 1}))
    assert verify(target, "--anchor", str(out), every=EVERY)[0] == 1
    assert fingerprint(target) == before


def test_verify_and_anchor_change_nothing_and_create_no_file(copy, tmp_path):
    before = snapshot_dir(copy.parent)
    assert list(before) == ["node.db"]
    code, report, _ = verify(copy, every=EVERY)
    assert code == 0 and report["rows"] == 14, report
    out = tmp_path / "anchor.json"
    assert run_cli("audit", "anchor", "--out", str(out), db=copy).returncode == 0
    assert verify(copy, "--anchor", str(out), every=EVERY)[0] == 0
    # Broken verifies and refused anchors write nothing either.
    out.write_text(json.dumps({**json.loads(out.read_text()), "seq": 1}))
    assert verify(copy, "--anchor", str(out), every=EVERY)[0] == 1
    assert snapshot_dir(copy.parent) == before  # same bytes, mtime and mode; no pepper, -wal or -shm


def test_verify_on_files_that_are_not_stigmem_databases_changes_nothing(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (a)")
    conn.close()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all " * 300)
    before = snapshot_dir(tmp_path)
    for db in (empty, other, junk):
        for cmd in (("audit", "verify"), ("audit", "anchor")):
            res = run_cli(*cmd, db=db)
            assert res.returncode == 2, (db, cmd, res.stdout, res.stderr)
            assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
            assert "stigmem database" in res.stderr or "cannot read database" in res.stderr, res.stderr
    missing = run_cli("audit", "verify", db=tmp_path / "missing.db")
    assert missing.returncode == 2 and "no node database" in missing.stderr
    assert snapshot_dir(tmp_path) == before


def _live_copy(tmp_path: Path, *, keep_shm: bool) -> tuple[Path, int]:
    """A copy taken while a node holds rows in its WAL, not yet in the main file."""
    src = tmp_path / "live" / "node.db"
    src.parent.mkdir()
    node = Node(Settings(db_path=src, audit_checkpoint_rows=EVERY))
    try:
        node.store.db.execute("PRAGMA wal_autocheckpoint=0")
        node.first_admin_key()
        for i in range(7):
            node.audit.record("apikey_revoked", actor="cli:test", detail={"id": f"k{i}"})
        rows = node.store.db.one("SELECT COUNT(*) FROM audit_log")[0]
        dest = tmp_path / "walcopy"
        dest.mkdir()
        for suffix in ("", "-wal") + (("-shm",) if keep_shm else ()):
            shutil.copyfile(f"{src}{suffix}", dest / f"node.db{suffix}")
    finally:
        node.close()
    conn = sqlite3.connect(f"file:{dest / 'node.db'}?mode=ro&immutable=1", uri=True)
    in_main = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'audit_log'").fetchone()[0]
    conn.close()
    assert in_main == 0, "the rows must still be in the WAL only"
    return dest / "node.db", rows


@pytest.mark.parametrize("keep_shm", [True, False])
def test_verify_reads_rows_that_are_only_in_the_wal_without_writing(tmp_path, keep_shm):
    db, rows = _live_copy(tmp_path, keep_shm=keep_shm)
    before = snapshot_dir(db.parent)
    code, report, _ = verify(db, every=EVERY)
    assert code == 0 and report["rows"] == rows, report
    after = snapshot_dir(db.parent)
    assert after["node.db"] == before["node.db"] and after["node.db-wal"] == before["node.db-wal"]
    assert set(after) == set(before)  # no -shm was created next to a copy that had none


AS_NOBODY = """
import os, sys
import stigmem_node.audit_anchor, stigmem_node.audit_verify, stigmem_node.cli, stigmem_node.store.readonly
os.setgroups([]); os.setgid(65534); os.setuid(65534)
assert os.getuid() == 65534 and not os.access(sys.argv[1], os.W_OK) and not os.access(sys.argv[2], os.W_OK)
sys.exit(stigmem_node.cli.main(sys.argv[3:]))
"""


def _as_nobody(folder: Path, db: Path, *args: str) -> subprocess.CompletedProcess:
    """The real CLI in a process that drops to uid/gid 65534 (nobody) before doing anything.

    The interpreter itself may live where nobody cannot read (e.g. under /root), so the
    process starts as root, imports the CLI, then drops its privileges for good."""
    return subprocess.run([sys.executable, "-c", AS_NOBODY, str(folder), str(db), *args],
                          capture_output=True, text=True, env=node_env(cli_env(EVERY)), timeout=60)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to switch to nobody")
@pytest.mark.parametrize("with_wal", [False, True])
def test_verify_works_on_a_read_only_copy_as_an_unprivileged_user(tmp_path, with_wal):
    if with_wal:
        src, rows = _live_copy(tmp_path, keep_shm=False)
    else:
        make_trail(tmp_path / "orig.db", rows=12, every=EVERY)
        src, rows = tmp_path / "orig.db", 14
    # pytest's own folders are private to root: use a folder that nobody may enter.
    base = Path(tempfile.mkdtemp(prefix="stigmem-ro-"))
    try:
        os.chmod(base, 0o711)
        folder = base / "ro"
        folder.mkdir()
        db = folder / "node.db"
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{src}{suffix}").exists():
                shutil.copyfile(f"{src}{suffix}", folder / f"node.db{suffix}")
        for f in folder.iterdir():
            os.chown(f, 65534, 65534)
            os.chmod(f, 0o400)
        os.chown(folder, 65534, 65534)
        os.chmod(folder, 0o500)
        before = snapshot_dir(folder)
        res = _as_nobody(folder, db, "audit", "verify", "--json", "--db", str(db))
        assert res.returncode == 0, res.stdout + res.stderr
        assert json.loads(res.stdout)["rows"] == rows
        anchored = _as_nobody(folder, db, "audit", "anchor", "--db", str(db))
        assert anchored.returncode == 0, anchored.stderr
        anchor_file = base / "anchor.json"
        anchor_file.write_text(anchored.stdout)
        os.chmod(anchor_file, 0o644)
        res = _as_nobody(folder, db, "audit", "verify", "--anchor", str(anchor_file), "--db", str(db))
        assert res.returncode == 0 and "still holds the anchor" in res.stdout, res.stdout + res.stderr
        assert snapshot_dir(folder) == before
    finally:
        shutil.rmtree(base)


# -- tampered values of any type ------------------------------------------------------------
def _loosen(db: Path) -> None:
    """Rebuild audit_log without types or NOT NULL (as an attacker with the file can), so
    that any value of any type can be stored; sqlite_sequence keeps its value."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute("CREATE TABLE loose (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts, event_type, peer_id, actor,"
                         " reason, detail, remote_addr, prev_hash, hash)")
            conn.execute("INSERT INTO loose SELECT * FROM audit_log")
            conn.execute("DROP TABLE audit_log")
            conn.execute("ALTER TABLE loose RENAME TO audit_log")
    finally:
        conn.close()


VALUES = {
    "blob": ("?", b"\x00\xff\xfe"),
    "integer": ("?", 7),
    "real": ("?", 1.5),
    "null": ("?", None),
    "not utf-8": ("CAST(? AS TEXT)", b"\xff\xfeabc"),
}


COLUMNS = ["ts", "event_type", "peer_id", "actor", "reason", "detail", "remote_addr", "prev_hash", "hash"]


# peer_id and reason are NULL in the row tampered with (and may be): NULL there is no change.
@pytest.mark.parametrize("column,kind", [(c, k) for c in COLUMNS for k in VALUES
                                         if not (k == "null" and c in ("peer_id", "reason"))])
def test_a_value_of_any_type_in_any_column_is_a_broken_row_in_one_line(copy, column, kind):
    _loosen(copy)
    expr, value = VALUES[kind]
    conn = sqlite3.connect(copy)
    with conn:
        conn.execute(f"UPDATE audit_log SET {column} = {expr} WHERE seq = 4", (value,))
    conn.close()
    code, report, human = verify(copy, every=EVERY)
    assert code == 1 and report["ok"] is False and report["first_bad_seq"] == 4, report
    assert "BROKEN at row 4" in human


def test_untampered_loose_table_still_verifies(copy):
    """The rebuild alone changes no value: the failures above come from the values."""
    _loosen(copy)
    assert verify(copy, every=EVERY)[0] == 0


@pytest.mark.parametrize("value", ["'many'", "x'00'", "NULL", "1.5"])
def test_a_tampered_sqlite_sequence_is_reported_not_raised(copy, value):
    conn = sqlite3.connect(copy)
    with conn:
        conn.execute(f"UPDATE sqlite_sequence SET seq = {value} WHERE name = 'audit_log'")
    conn.close()
    code, report, _ = verify(copy, every=EVERY)
    assert code == 1 and "sqlite_sequence" in report["problem"], report


def test_a_checkpoint_with_a_detail_of_the_wrong_shape_is_a_broken_row(copy):
    from tests.audit_tools import rehash

    first = next(r["seq"] for r in read_rows(copy) if r["event_type"] == "audit_checkpoint")
    for detail in ('"text"', '{"v": 1}', '{"v": 1, "node_id": 5, "key_id": "k", "seq": 1, "hash": "h", '
                   '"prev_checkpoint": 0, "sig": "s"}', "[1, 2]", "not json"):
        rehash(copy, edit=lambda r, d=detail: r.update(detail=d) if r["seq"] == first else None)
        code, report, _ = verify(copy, every=EVERY)
        assert code == 1 and report["first_bad_seq"] == first and "checkpoint" in report["problem"], (detail, report)


class AppendsBeforeReadingTheSequence:
    """The read-only database, but another connection commits a new audit row at the worst
    moment: after the last row was read, before sqlite_sequence is."""

    def __init__(self, db, writer: Node) -> None:
        self.db, self.writer = db, writer

    @property
    def dialect(self):
        return self.db.dialect

    def snapshot(self):
        return self.db.snapshot()

    def all(self, sql, params=()):
        return self.db.all(sql, params)

    def one(self, sql, params=()):
        if "sqlite_sequence" in sql:
            self.writer.audit.record("apikey_revoked", actor="cli:test", detail={"id": "late"})
        return self.db.one(sql, params)


def test_verify_reads_one_snapshot_while_another_connection_appends(copy):
    from stigmem_node.audit_anchor import verify_with_anchor
    from stigmem_node.store.readonly import open_read_only

    shutil.copyfile(copy.parent.parent / "orig.db.pepper", copy.with_name("node.db.pepper"))  # the node's pepper
    writer = Node(Settings(db_path=copy, audit_checkpoint_rows=EVERY))
    try:
        with open_read_only(copy) as ro:
            report = verify_with_anchor(AppendsBeforeReadingTheSequence(ro, writer), None, checkpoint_rows=EVERY)
        assert report.ok and report.rows == 14, report  # the late row is not seen, nor taken for a deletion
        assert len(read_rows(copy)) == 15
    finally:
        writer.close()
