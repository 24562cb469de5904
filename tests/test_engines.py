"""The two storage engines, below the node: what each guarantees on its own.

PostgreSQL: seq handed out in commit order (a raw connection cannot break it), append-only
facts, a busy write lock gives ``StorageBusy``, replicas starting together migrate once, a
database of something else is refused, the private keys are closed to other roles.
SQLite: reads go on while another process holds the write lock; the write waits for the
busy timeout, then ``StorageBusy``.  Both: storage refuses to run on an event loop's thread.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from stigmem_node.errors import ConfigError
from stigmem_node.store import ConstraintViolation, StorageBusy, StorageUnavailable, Store
from stigmem_node.store.db import SCHEMA_VERSION
from stigmem_node.store.facts import INSERT_COLS

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def pg_url(engine) -> str:
    """An empty PostgreSQL database of the test's own (tests that take it are postgres_only)."""
    return engine.url("pg", empty=True)


def _fact_row(fact_id: str) -> tuple:
    return (fact_id, f"cid-{fact_id}", "ex:e", "ex:r", "string", "v", "content", "ex:s", "2026-01-01T00:00:00Z",
            "0001", None, 1.0, "team", "ex:node", None, "{}", None, None)


_INSERT = f"INSERT INTO facts ({INSERT_COLS}) VALUES ({', '.join(['%s'] * 18)})"


def _waiting_on_lock(url: str, pid: int) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return bool(row and row[0] == "Lock")


@pytest.mark.postgres_only
def test_pg_seq_is_commit_ordered_even_for_a_raw_connection(pg_url):
    """A second inserter waits until the first commits, so a later commit never holds a
    smaller seq; shown with raw connections that skip the node's own write lock."""
    Store(pg_url).close()  # the schema
    first = psycopg.connect(pg_url)
    second = psycopg.connect(pg_url)
    try:
        first.execute(_INSERT, _fact_row("a"))  # draws its seq, holds the lock until commit
        done = threading.Event()

        def insert_second() -> None:
            second.execute(_INSERT, _fact_row("b"))
            second.commit()
            done.set()

        thread = threading.Thread(target=insert_second)
        thread.start()
        deadline = time.monotonic() + 10
        while not _waiting_on_lock(pg_url, second.info.backend_pid):
            assert time.monotonic() < deadline, "the second insert did not wait for the first to commit"
            time.sleep(0.02)
        assert not done.is_set()
        first.commit()
        thread.join(10)
        assert done.is_set()
        with psycopg.connect(pg_url) as conn:
            seqs = dict(conn.execute("SELECT id, seq FROM facts").fetchall())
        assert seqs["a"] < seqs["b"]
    finally:
        first.close()
        second.close()


@pytest.mark.postgres_only
def test_pg_facts_are_append_only(pg_url):
    store = Store(pg_url)
    try:
        with store.transaction():
            store.facts.insert_many([tuple(_fact_row("a"))])
        seq = store.facts.get("a").seq
        for sql in ("UPDATE facts SET value_v = 'x' WHERE id = 'a'", "DELETE FROM facts WHERE id = 'a'",
                    "TRUNCATE facts"):
            with pytest.raises(ConstraintViolation, match="append-only"):
                store.db.execute(sql)
        with store.transaction():  # only the signature may be renewed
            store.facts.set_signatures([("sig", '{"x":1}', seq)])
        assert store.facts.get("a").origin_sig == "sig"
    finally:
        store.close()


@pytest.mark.postgres_only
def test_pg_write_waits_for_the_busy_timeout_then_storage_busy(pg_url):
    Store(pg_url).close()
    store = Store(pg_url, busy_timeout_ms=300)
    holder = psycopg.connect(pg_url)
    try:
        holder.execute("SELECT pg_advisory_xact_lock(8386093285)")  # another replica's write transaction
        started = time.monotonic()
        with pytest.raises(StorageBusy), store.transaction():
            store.meta.set("k", "v")
        assert time.monotonic() - started >= 0.25
        assert store.meta.get("node_id") is None  # reads never wait
        holder.rollback()
        store.meta.set("k", "v")
        assert store.meta.get("k") == "v"
    finally:
        holder.close()
        store.close()


@pytest.mark.postgres_only
def test_pg_replicas_starting_together_migrate_once(pg_url):
    stores: list[Store] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            stores.append(Store(pg_url))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == [] and len(stores) == 4
        assert stores[0].db.one("SELECT version FROM stigmem_schema") == (SCHEMA_VERSION,)
        assert stores[0].db.one("SELECT COUNT(*) FROM stigmem_schema") == (1,)
    finally:
        for s in stores:
            s.close()


@pytest.mark.postgres_only
def test_pg_refuses_a_database_of_something_else_and_an_empty_one_without_create(pg_url):
    with pytest.raises(ConfigError) as empty:
        Store(pg_url, create=False)
    assert empty.value.code == "not_a_stigmem_database"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(ConfigError) as other:
        Store(pg_url)
    assert other.value.code == "not_a_stigmem_database"
    with psycopg.connect(pg_url, autocommit=True) as conn:  # nothing was written to it
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"invoices"}


@pytest.mark.postgres_only
def test_pg_unreachable_server_is_a_clear_error():
    with pytest.raises(ConfigError) as exc:
        Store("postgresql://postgres@127.0.0.1:1/nothing")
    assert exc.value.code == "database_unavailable"
    assert "127.0.0.1:1" in exc.value.message


@pytest.mark.postgres_only
def test_pg_private_keys_are_closed_to_other_roles(pg_url):
    Store(pg_url).close()
    role = f"stigmem_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        other = pg_url.replace("postgres@", f"{role}@", 1)
        with psycopg.connect(other, autocommit=True) as conn:
            for table in ("node_keys", "api_keys", "node_meta", "facts"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(f"SELECT * FROM {table}")
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f'DROP ROLE "{role}"')


@pytest.mark.postgres_only
def test_pg_connection_lost_mid_run_is_storage_unavailable(pg_url):
    store = Store(pg_url)
    try:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name LIKE 'stigmem-node:%%' AND datname = current_database()")
        # The pool notices the broken connection; a call either succeeds on a fresh one or
        # says the database is unavailable: never a driver error.
        try:
            store.meta.get("x")
        except (StorageBusy, StorageUnavailable) as exc:
            assert exc.code in ("database_unavailable", "database_busy")
        assert store.meta.get("x") is None
    finally:
        store.close()


# -- SQLite ----------------------------------------------------------------------------------
_HOLD = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def test_sqlite_reads_go_on_while_another_process_holds_the_write_lock(tmp_path: Path):
    store = Store(tmp_path / "n.db", busy_timeout_ms=500)
    store.meta.set("k", "v")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / "n.db"), "3"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        results: dict[str, object] = {}

        def write() -> None:
            try:
                store.meta.set("k", "w")
            except StorageBusy as exc:
                results["write"] = exc

        writer = threading.Thread(target=write)
        writer.start()  # waits on the lock in its thread ...
        time.sleep(0.1)
        assert store.meta.get("k") == "v"  # ... while this thread reads
        writer.join(10)
        assert isinstance(results.get("write"), StorageBusy)
    finally:
        holder.wait(10)
        store.close()


def test_storage_refuses_the_event_loop_thread(tmp_path: Path):
    store = Store(tmp_path / "n.db")

    async def on_loop() -> None:
        store.meta.get("node_id")

    try:
        with pytest.raises(RuntimeError, match="event loop"):
            asyncio.run(on_loop())
        assert store.meta.get("node_id") is None  # fine off the loop

        async def in_thread() -> str | None:
            return await asyncio.to_thread(store.meta.get, "node_id")

        assert asyncio.run(in_thread()) is None
    finally:
        store.close()



@pytest.mark.postgres_only
def test_pg_pull_lease_is_one_holder_across_processes_and_dies_with_its_connection(pg_url):
    one, two = Store(pg_url), Store(pg_url)
    try:
        held = one.replication.pull_lease("peer-1")
        assert held is not None
        assert two.replication.pull_lease("peer-1") is None  # another replica: not now
        other = two.replication.pull_lease("peer-2")  # another peer: free
        assert other is not None
        other.release()
        held.release()
        again = two.replication.pull_lease("peer-1")
        assert again is not None
        two_conn_pid = two.db._leases._conn.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:  # its replica dies
            admin.execute("SELECT pg_terminate_backend(%s)", (two_conn_pid,))
        deadline = time.monotonic() + 10
        while (taken := one.replication.pull_lease("peer-1")) is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        taken.release()
        again.release()  # releasing a lock whose connection died is harmless
    finally:
        one.close()
        two.close()


@pytest.mark.postgres_only
def test_pg_leases_are_one_holder_in_process_too_and_many_cost_one_connection(pg_url):
    store = Store(pg_url)
    try:
        held = [store.replication.pull_lease(f"peer-{i}") for i in range(50)]
        assert all(h is not None for h in held)
        # Advisory locks stack within a session: the process itself keeps the second one out.
        assert store.replication.pull_lease("peer-0") is None
        with psycopg.connect(pg_url, autocommit=True) as admin:
            backends = admin.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = %s",
                                     (f"stigmem-node:{os.getpid()}:leases",)).fetchone()[0]
        assert backends == 1
        for h in held:
            h.release()
        again = store.replication.pull_lease("peer-0")
        assert again is not None
        again.release()
    finally:
        store.close()


def test_sqlite_pull_lease_is_one_holder_per_process(tmp_path: Path):
    store = Store(tmp_path / "n.db")
    try:
        held = store.replication.pull_lease("p")
        assert held is not None and store.replication.pull_lease("p") is None
        held.release()
        assert store.replication.pull_lease("p") is not None
    finally:
        store.close()


@pytest.mark.postgres_only
def test_pg_statistics_are_refreshed_so_a_page_walks_the_seq_index(pg_url):
    """A freshly filled facts table without statistics is planned as nearly empty (a sort of
    the whole table per page); refresh_statistics analyses it, and a page walks the index."""
    store = Store(pg_url)
    page = ("EXPLAIN SELECT seq, entry, hlc FROM facts WHERE seq > 0 AND received_from IS NULL"
            " AND scope IN ('team', 'public') ORDER BY seq LIMIT 11")
    try:
        with store.transaction():
            store.facts.insert_many([_fact_row(f"f{i}") for i in range(3000)])
        deadline = time.monotonic() + 20
        while "facts" not in store.db.refresh_statistics():  # the server's counters arrive within a second
            assert time.monotonic() < deadline, "facts was never analysed"
            time.sleep(0.2)
        plan = "\n".join(r[0] for r in store.db.all(page))
        assert "Index Scan using facts_pkey" in plan and "Sort" not in plan, plan
        assert store.db.refresh_statistics() == []  # nothing changed since
    finally:
        store.close()


def test_insert_new_gives_each_row_its_stored_seq_on_both_engines(engine, tmp_path: Path):
    """A full batch, a later one and a single row: the seqs returned are the ones a read
    finds (on SQLite computed from the last rowid, on PostgreSQL read back)."""
    store = Store(engine.url("seqs") or tmp_path / "seqs.db")
    try:
        def insert(ids: list[str]) -> dict[str, int]:
            with store.transaction():
                return store.facts.insert_new([_fact_row(i) for i in ids])

        def stored(ids: list[str]) -> dict[str, int]:
            return store.facts.seqs_of(ids)

        first = [f"f-{uuid.uuid4()}" for _ in range(300)]
        assert insert(first) == stored(first) and len(set(stored(first).values())) == 300
        later = [f"f-{uuid.uuid4()}" for _ in range(7)]
        assert insert(later) == stored(later)
        assert min(stored(later).values()) > max(stored(first).values())
        one = [f"f-{uuid.uuid4()}"]
        assert insert(one) == stored(one)
        with store.transaction():
            assert store.facts.insert_new([]) == {}
    finally:
        store.close()
