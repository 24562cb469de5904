"""``stigmem-node migrate --to``: a SQLite node moved into an empty PostgreSQL database is the
same node there (identity, keys, facts with their seq, API keys, the audit trail; peers,
cursors, nonces, tombstones and activity row for row), the SQLite file is untouched, and a
database that already holds a node is refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.engines import sql
from tests.nodes import ServedNode, run_cli, stop_all
from tests.test_erasure_upgrade import back_to_schema_6
from tests.test_replication import fact, federate, post_facts, pull, wait_for
from tests.test_status import sign_in

psycopg = pytest.importorskip("psycopg")


def _ok(*args: str, **kw) -> str:
    res = run_cli(*args, **kw)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _sqlite_node(tmp_path: Path) -> Path:
    db = tmp_path / "n.db"
    _ok("init", db=db)
    for i in range(25):
        _ok("facts", "add", f"ex:e{i}", "ex:r", f"value {i}", "--scope", "team", db=db)
    _ok("apikey", "create", "--permissions", "facts:read", "--label", "reader", db=db)
    _ok("keys", "rotate", "--grace", "1", db=db)  # a second key, audit rows, re-signed facts
    return db


def _digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.fixture
def pg_url(engine) -> str:
    """An empty PostgreSQL database of the test's own (tests that take it are postgres_only)."""
    return engine.url("pg", empty=True)


@pytest.mark.postgres_only
def test_migrate_moves_the_whole_node_and_leaves_the_file_untouched(tmp_path: Path, pg_url: str):
    db = _sqlite_node(tmp_path)
    before = _digest(db)
    files_before = sorted(p.name for p in tmp_path.iterdir())
    report = json.loads(_ok("migrate", "--to", pg_url, "--json", db=db))
    assert report["audit_chain"]["ok"] is True
    assert report["copied"]["facts"] == 25 and report["copied"]["node_keys"] == 2
    assert report["copied"]["api_keys"] == 2 and report["copied"]["audit_log"] >= 3
    assert _digest(db) == before and sorted(p.name for p in tmp_path.iterdir()) == files_before

    lite = json.loads(_ok("info", "--json", db=db))
    pg = json.loads(_ok("info", "--json", "--database-url", pg_url))
    for field in ("node_id", "node_url", "key_id", "federation_pubkey", "pubkey_fingerprint", "previous_keys"):
        assert pg[field] == lite[field], field
    facts_lite = json.loads(_ok("facts", "list", "--json", "--limit", "100", db=db))
    facts_pg = json.loads(_ok("facts", "list", "--json", "--limit", "100", "--database-url", pg_url))
    assert facts_pg == facts_lite
    keys = json.loads(_ok("apikey", "list", "--json", "--database-url", pg_url))
    assert sorted(k["label"] or "" for k in keys) == sorted(
        k["label"] or "" for k in json.loads(_ok("apikey", "list", "--json", db=db)))

    # The node goes on there: seq continues past the copied ones, the chain stays whole.
    _ok("facts", "add", "ex:new", "ex:r", "after", "--database-url", pg_url)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT seq FROM facts WHERE entity = 'ex:new'").fetchone()[0] > 25
    assert "intact" in _ok("audit", "verify", "--database-url", pg_url)


@pytest.mark.postgres_only
def test_migrate_refuses_a_target_that_holds_a_node(tmp_path: Path, pg_url: str):
    db = _sqlite_node(tmp_path)
    _ok("migrate", "--to", pg_url, db=db)
    with psycopg.connect(pg_url) as conn:
        counts = conn.execute("SELECT (SELECT COUNT(*) FROM facts), (SELECT COUNT(*) FROM audit_log)").fetchone()
    _ok("facts", "add", "ex:more", "ex:r", "v", db=db)
    res = run_cli("migrate", "--to", pg_url, db=db)
    assert res.returncode == 1 and "migration_refused" in res.stderr and "Traceback" not in res.stderr
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT (SELECT COUNT(*) FROM facts), (SELECT COUNT(*) FROM audit_log)").fetchone() \
            == counts


@pytest.mark.postgres_only
def test_migrate_refuses_bad_arguments_in_one_line(tmp_path: Path, pg_url: str):
    res = run_cli("migrate", "--to", str(tmp_path / "other.db"), db=tmp_path / "n.db")
    assert res.returncode == 2 and "postgresql://" in res.stderr
    res = run_cli("migrate", "--to", pg_url, db=tmp_path / "missing.db")
    assert res.returncode == 2 and "no node database" in res.stderr
    assert not (tmp_path / "missing.db").exists()
    res = run_cli("migrate", "--to", "postgresql://postgres@127.0.0.1:1/none", db=_sqlite_node(tmp_path))
    assert res.returncode == 2 and "cannot connect" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.postgres_only
def test_migrate_refuses_a_source_of_an_older_schema_until_it_is_opened_once(tmp_path: Path, pg_url: str):
    """The source is read without writing, so it is never upgraded there: a schema-6 file is
    refused with what to do, and copies once any command has opened it."""
    db = _sqlite_node(tmp_path)
    back_to_schema_6(db)
    res = run_cli("migrate", "--to", pg_url, db=db)
    assert res.returncode == 1 and "migration_refused" in res.stderr and "schema version 6" in res.stderr
    assert "Traceback" not in res.stderr and _tables(pg_url) == set()  # the target untouched
    _ok("info", db=db)  # opens the node: migration 7
    report = json.loads(_ok("migrate", "--to", pg_url, "--json", db=db))
    assert report["audit_chain"]["ok"] is True and report["copied"]["erased_facts"] == 0


NOT_COPIED = {"sessions"}  # status page sign-ins: an operator signs in again after the move


def _tables(target: Path | str) -> set[str]:
    if isinstance(target, Path):
        rows = sql(target, "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    else:
        rows = sql(target, "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
                           "AND table_name <> 'stigmem_schema'")
    return {name for (name,) in rows}


@pytest.mark.postgres_only
def test_migrate_copies_every_table_of_a_federated_node_row_for_row(tmp_path: Path, pg_url: str):
    """A node that pulled and was pulled from, erased a fact and an entity and has a status-page
    session: every table of its schema arrives row for row (peers and their keys, cursors, nonces,
    tombstones and the ids they erased, replication activity), whatever tables a later schema
    adds, except the status page's sessions, which are not copied (docs/operating.md: sign in
    again)."""
    a, b = ServedNode(tmp_path / "a", "a"), ServedNode(tmp_path / "b", "b")
    try:
        federate(a, b)
        post_facts(a, [fact(f"ex:a{i}", "company") for i in range(5)])
        own = post_facts(b, [fact(f"ex:b{i}", "company") for i in range(5)])
        assert pull(b)[0] == 0 and pull(a)[0] == 0  # b has cursors; a's pulls left nonces in b
        with b.client() as c:
            assert c.delete(f"/v1/facts/{own[0]['id']}", params={"reason": "right_to_erasure"}).status_code == 200
            assert c.post("/v1/tombstones", json={"entity": own[1]["entity"]}).json()["facts_erased"] == 1
        with sign_in(b):
            pass
        wait_for(lambda: sql(b.db, "SELECT COUNT(*) FROM peer_pulls")[0][0] == 1, 10, what="b's peer_pulls")
    finally:
        stop_all([a, b], wait=True)
    tables = _tables(b.db)
    assert {"peers", "peer_keys", "nonce_cache", "replication_state", "tombstones", "erased_facts", "peer_pulls",
            "fact_traffic", "sessions"} <= tables
    empty = sorted(t for t in tables if not sql(b.db, f"SELECT COUNT(*) FROM {t}")[0][0])
    assert empty == [], f"the source node should fill every table, these are empty: {empty}"

    report = json.loads(_ok("migrate", "--to", pg_url, "--json", db=b.db))
    assert report["audit_chain"]["ok"] is True
    copied = tables - NOT_COPIED
    assert _tables(pg_url) == tables and set(report["copied"]) == copied
    for table in sorted(copied):
        assert sorted(sql(pg_url, f"SELECT * FROM {table}")) == sorted(sql(b.db, f"SELECT * FROM {table}")), table
    assert sql(pg_url, "SELECT COUNT(*) FROM sessions") == [(0,)]
