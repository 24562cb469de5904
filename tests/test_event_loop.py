"""Nothing blocks the event loop.

A real node serves (its own process, on SQLite or PostgreSQL) while another process holds
the database's write lock (SQLite's, or the node-wide advisory lock on PostgreSQL):
requests that write nothing still answer fast, a write gets
``503 database_busy`` with ``Retry-After`` once the busy timeout passes, and the health
endpoints tell liveness from readiness.  Storage itself refuses to run on a thread that
runs an event loop.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from stigmem_node.offload import Lanes
from stigmem_node.store import Store
from stigmem_node.store.db import ON_LOOP, is_postgres_url
from stigmem_node.store.postgres import WRITE_LOCK
from tests.engines import refusing_connections
from tests.nodes import RunningNode

HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
print("released", flush=True)
"""

HOLD_PG_LOCK = """
import sys, time
import psycopg
conn = psycopg.connect(sys.argv[1])
conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.rollback()
print("released", flush=True)
""".replace("WRITE_LOCK", str(WRITE_LOCK))

HOLD_S = 5.0
BAR_MS = 100.0
READ_EVERY_S = 0.01


@contextmanager
def write_lock_held(db: Path | str, seconds: float = HOLD_S) -> Iterator[subprocess.Popen[str]]:
    """Another process (python -c with sqlite3, or psycopg) holds ``db``'s write lock for
    ``seconds``."""
    script = HOLD_PG_LOCK if is_postgres_url(db) else HOLD_LOCK
    holder = subprocess.Popen([sys.executable, "-c", script, str(db), str(seconds)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.wait(timeout=seconds + 30)


def still_locked(holder: subprocess.Popen[str]) -> bool:
    return holder.poll() is None


def fact_body(i: int) -> dict:
    return {"entity": f"stigmem://test/e{i}", "relation": "memory:note", "value": {"type": "string", "v": "x"},
            "source": "stigmem://test/agent", "scope": "public", "confidence": 0.9}


@pytest.fixture
def busy_node(start_process_node) -> RunningNode:
    """A served node whose writes wait at most one second for the write lock."""
    node = start_process_node("a", env={"STIGMEM_DB_BUSY_TIMEOUT_MS": "1000"})
    with node.client() as c:
        assert c.post("/v1/facts", json=fact_body(0)).status_code == 201
    return node


@pytest.mark.sqlite_only  # PostgreSQL's busy write lock: test_engines.test_pg_write_waits_for_the_busy_timeout_…
def test_reads_answer_fast_and_writes_get_503_while_another_process_holds_the_write_lock(busy_node: RunningNode):
    node = busy_node
    writes: list[tuple[httpx.Response, bool]] = []  # (answer, lock still held when it came)
    latencies_ms: list[float] = []
    with write_lock_held(node.target) as holder:
        started = time.monotonic()

        def write_while_locked() -> None:
            with node.client() as c:
                i = 1
                while still_locked(holder) and time.monotonic() - started < HOLD_S - 2:
                    res = c.post("/v1/facts", json=fact_body(i), timeout=30)
                    writes.append((res, still_locked(holder)))
                    i += 1

        writer = threading.Thread(target=write_while_locked)
        writer.start()
        try:
            with node.client() as c:
                reads = ["/healthz", "/readyz", "/v1/facts?limit=5", "/.well-known/stigmem", "/v1/federation/peers"]
                # An open-loop schedule: one read every 10 ms, each timed from when it was due,
                # so that a frozen loop counts against every read it held up, not just one.
                due = time.monotonic() + 0.05
                k = 0
                while due - started < HOLD_S - 1.5:
                    time.sleep(max(0.0, due - time.monotonic()))
                    path = reads[k % len(reads)]
                    res = c.get(path, timeout=30)
                    latencies_ms.append((time.monotonic() - due) * 1000)
                    assert res.status_code == 200, (path, res.text)
                    if path == "/healthz":
                        assert res.json()["database"] == "ok"
                    k += 1
                    due += READ_EVERY_S
                measured_while_locked = still_locked(holder)
        finally:
            writer.join(timeout=30)

    assert measured_while_locked, "the lock was released before the reads were measured"
    assert len(latencies_ms) >= 50, f"only {len(latencies_ms)} reads were measured"
    latencies_ms.sort()
    p99 = latencies_ms[int(len(latencies_ms) * 0.99) - 1]
    print(f"reads while locked: {len(latencies_ms)}, p50 {latencies_ms[len(latencies_ms) // 2]:.1f} ms, "
          f"p99 {p99:.1f} ms, max {latencies_ms[-1]:.1f} ms; writes: {[r.status_code for r, _ in writes]}")
    assert p99 < BAR_MS, f"p99 {p99:.1f} ms over {len(latencies_ms)} reads (max {latencies_ms[-1]:.1f} ms)"

    busy = [(res, held) for res, held in writes if res.status_code == 503]
    assert busy, [r.status_code for r, _ in writes]
    for res, held in busy:
        assert held  # the busy timeout (1 s) answered, not the lock's release (5 s)
        assert res.json()["error"] == "database_busy" and res.headers["Retry-After"] == "1"

    # Once the lock is gone, writes go through again.
    with node.client() as c:
        assert c.post("/v1/facts", json=fact_body(999)).status_code == 201


def test_an_api_key_use_is_recorded_later_without_holding_up_the_read(busy_node: RunningNode):
    node = busy_node
    key = node.cli_json("apikey", "create", "--permissions", "facts:read")["key"]
    with write_lock_held(node.target, seconds=3) as holder, node.client(key) as c:
        t0 = time.perf_counter()
        assert c.get("/v1/facts").status_code == 200  # the key's first use: its touch is queued
        assert (time.perf_counter() - t0) * 1000 < 1000 and still_locked(holder)  # not after the 1 s timeout
    # The queued touch met the busy database and was dropped; the next use records it.
    with node.client(key) as c:
        assert c.get("/v1/facts").status_code == 200
    deadline = time.monotonic() + 20
    key_id = key.split("_")[1]
    while time.monotonic() < deadline:
        ((used,),) = node.sql("SELECT last_used_at FROM api_keys WHERE id = ?", (key_id,))
        if used is not None:
            break
        time.sleep(0.1)
    assert used is not None


@pytest.mark.sqlite_only
def test_readyz_is_503_when_the_database_is_gone_while_healthz_stays_200(start_node):
    node = start_node("a")
    assert httpx.get(node.url + "/readyz").json() == {"status": "ready", "node_id": node.node.identity.node_id,
                                                      "database": "ok"}
    os.rename(node.db, node.db.with_name("moved.db"))  # removed (or replaced) under the running node
    res = httpx.get(node.url + "/readyz")
    assert res.status_code == 503 and res.json()["error"] == "database_unavailable"
    assert str(node.db) not in res.text  # the reason is logged, not shown
    health = httpx.get(node.url + "/healthz")
    assert health.status_code == 200 and health.json()["database"] == "unavailable"
    assert not node.db.exists()  # asking did not create an empty database in its place

    node.db.write_bytes(b"not a database" * 100)  # something else now sits at the path
    assert httpx.get(node.url + "/readyz").status_code == 503


def test_storage_refuses_to_run_on_the_event_loop_and_runs_in_the_lanes(tmp_path: Path):
    store = Store(tmp_path / "n.db")
    lanes = Lanes(read_threads=2, write_threads=1)

    async def main() -> None:
        with pytest.raises(RuntimeError, match=ON_LOOP):
            store.meta.get("node_id")
        with pytest.raises(RuntimeError, match=ON_LOOP):
            with store.transaction():
                pass
        await lanes.write(store.meta.set, "k", "v")
        assert await lanes.read(store.meta.get, "k") == "v"

    try:
        asyncio.run(main())
        assert store.meta.get("k") == "v"  # off the loop, as before
    finally:
        store.close()


def test_the_lanes_are_separate_a_full_write_lane_never_delays_a_read():
    lanes = Lanes(read_threads=1, write_threads=1)
    release = threading.Event()

    async def main() -> None:
        stuck = asyncio.ensure_future(lanes.write(release.wait, 30))  # fills the write lane
        queued = asyncio.ensure_future(lanes.write(lambda: "second write"))
        await asyncio.sleep(0.05)
        assert await lanes.read(lambda: "read") == "read"  # not behind the writes
        assert not queued.done()
        release.set()
        assert await stuck and await queued == "second write"

    asyncio.run(main())


def test_the_busy_timeout_and_lane_sizes_are_settings(tmp_path: Path):
    from stigmem_node.config import from_env
    from stigmem_node.errors import ConfigError
    from stigmem_node.node import Node

    env = {"STIGMEM_DB_PATH": str(tmp_path / "n.db"), "STIGMEM_DB_BUSY_TIMEOUT_MS": "1500",
           "STIGMEM_READ_LANE_THREADS": "8", "STIGMEM_WRITE_LANE_THREADS": "2"}
    node = Node(from_env(env))
    try:
        assert node.store.db.busy_timeout_ms == 1500
        assert node.store.db.conn.execute("PRAGMA busy_timeout").fetchone() == (1500,)
        assert (node.lanes.read_threads, node.lanes.write_threads) == (8, 2)
    finally:
        node.close()
    for name, value in [("STIGMEM_DB_BUSY_TIMEOUT_MS", "soon"), ("STIGMEM_DB_BUSY_TIMEOUT_MS", "-1"),
                        ("STIGMEM_READ_LANE_THREADS", "0"), ("STIGMEM_WRITE_LANE_THREADS", "2000")]:
        with pytest.raises(ConfigError, match=name):
            from_env({name: value})


@pytest.mark.postgres_only
def test_readyz_is_503_while_postgresql_refuses_the_node_and_ready_again_after(start_node, engine):
    """A database that goes away (a failover, a partition) and comes back: the node answers
    503 database_unavailable meanwhile, never a 500, stays live, and recovers by itself."""
    node = start_node("a")
    with refusing_connections(str(node.target)):
        deadline = time.monotonic() + 20
        while (res := httpx.get(node.url + "/readyz", timeout=30)).status_code != 503:
            assert res.status_code == 200 and time.monotonic() < deadline
        assert res.json()["error"] == "database_unavailable" and res.headers["Retry-After"] == "1"
        health = httpx.get(node.url + "/healthz", timeout=30)
        assert health.status_code == 200 and health.json()["database"] == "unavailable"
        with node.client() as c:
            listed = c.get("/v1/facts", timeout=30)
        assert listed.status_code == 503 and listed.json()["error"] == "database_unavailable"
    deadline = time.monotonic() + 20
    while httpx.get(node.url + "/readyz", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "the node did not reconnect"
        time.sleep(0.1)
    with node.client() as c:
        assert c.post("/v1/facts", json=fact_body(5)).status_code == 201
