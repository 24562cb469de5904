"""Token-verified pulls/s on SQLite, one PostgreSQL replica and two; replication into PostgreSQL.

In one run, on this machine:
1. one `serve` on SQLite (the baseline);
2. one `serve` on a fresh PostgreSQL database;
3. two `serve` replicas on that same database, the load split over both (two wrk processes);
each with 10,000 facts, a registered peer, one fresh single-use token per request, pages of
``--limit`` facts.  Then replication: `stigmem-node pull` of ``--facts`` facts into a SQLite
node and into a PostgreSQL node, each against the insert ceiling of its own engine (the same
rows inserted in one transaction).  Prints rates, CPU per request of the node processes and
of PostgreSQL's backends, and the ratios.

    python bench/replicas.py [--seconds 10] [--connections 32] [--limit 10] [--facts 10000]

Needs wrk and a PostgreSQL server (STIGMEM_BENCH_DATABASE_URL, default
postgresql://postgres@127.0.0.1:5432/postgres, used to create and drop the databases).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Node, fact_rows, insert_ceiling, peer_up, wrk
from pull import load_facts, mint_tokens

from stigmem_node.encoding import b64url_decode

ADMIN_URL = os.environ.get("STIGMEM_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PEPPER = "1:" + "b" * 64


def _db_url(name: str) -> str:
    return urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))


def create_db() -> str:
    name = f"stigmem_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_db(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process on the machine (the backends serving us)."""
    total, ticks = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                head, rest = fh.read().rsplit(")", 1)
        except OSError:
            continue
        if head.endswith("(postgres"):
            fields = rest.split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def pg_node(work: Path, name: str, url: str, node_url: str | None = None) -> Node:
    env = {"STIGMEM_DATABASE_URL": url, "STIGMEM_API_KEY_PEPPER": PEPPER}
    if node_url:
        env["STIGMEM_NODE_URL"] = node_url
    return Node(work, name, extra_env=env)


def peer_key(b: Node) -> tuple[Ed25519PrivateKey, dict]:
    info = b.well_known()
    with sqlite3.connect(b.db) as conn:
        (priv,) = conn.execute("SELECT private_key FROM node_keys WHERE status='active'").fetchone()
    return Ed25519PrivateKey.from_private_bytes(b64url_decode(priv)), info


def measure(servers: list[Node], b_key: Ed25519PrivateKey, b_info: dict, work: Path, *, path: str, seconds: int,
            connections: int, tag: str) -> dict:
    """wrk against each server at once (connections split evenly), fresh tokens for each."""
    sub = servers[0].well_known()["node_id"]
    budget = 9000 * seconds
    files = []
    for i, _ in enumerate(servers):
        f = work / f"tokens-{tag}-{i}.txt"
        mint_tokens(f, budget, iss=b_info["node_id"], sub=sub, key=b_key, key_id=b_info["key_id"], req_path=path)
        files.append(f)
    results: list[dict] = [{}] * len(servers)
    cpu0 = [s.cpu_seconds() for s in servers]
    pg0 = postgres_cpu()

    def run(i: int) -> None:
        results[i] = wrk(servers[i].url, path, files[i], seconds=seconds,
                         connections=max(1, connections // len(servers)), cpu=None)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(servers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    requests = sum(r["requests"] for r in results)
    node_cpu = sum(s.cpu_seconds() - c for s, c in zip(servers, cpu0, strict=True))
    return {"rps": requests / seconds, "non2xx": sum(r["non2xx"] for r in results),
            "p99_ms": max(r["p99_ms"] for r in results), "node_us": node_cpu / max(requests, 1) * 1e6,
            "pg_us": (postgres_cpu() - pg0) / max(requests, 1) * 1e6}


def replicate(target: Node, database: list[str]) -> float:
    """Seconds for `stigmem-node pull` into ``target`` (stopped first) to store every fact."""
    target.stop()
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "stigmem_node", "pull", "--json", *database],
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "STIGMEM_API_KEY_PEPPER": PEPPER})
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"pull failed: {res.stdout}{res.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--facts", type=int, default=10_000, help="facts replicated in part 2")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stigmem-bench-replicas-"))
    path = f"/v1/federation/facts?limit={args.limit}"
    pulls: dict[str, dict] = {}
    dbs: list[str] = []
    nodes: list[Node] = []
    try:
        b = Node(work, "b")
        nodes.append(b)
        b_key, b_info = peer_key(b)

        lite = Node(work, "lite")
        nodes.append(lite)
        peer_up(lite, b)
        load_facts(lite, 10_000)
        pulls["SQLite, 1 process"] = measure([lite], b_key, b_info, work, path=path, seconds=args.seconds,
                                             connections=args.connections, tag="lite")
        lite.stop()

        dbs.append(create_db())
        url = _db_url(dbs[-1])
        r0 = pg_node(work, "pg0", url)
        nodes.append(r0)
        peer_up(r0, b)
        load_facts(r0, 10_000)
        pulls["PostgreSQL, 1 replica"] = measure([r0], b_key, b_info, work, path=path, seconds=args.seconds,
                                                 connections=args.connections, tag="pg1")
        r1 = pg_node(work, "pg1", url, node_url=r0.url)
        nodes.append(r1)
        pulls["PostgreSQL, 2 replicas"] = measure([r0, r1], b_key, b_info, work, path=path, seconds=args.seconds,
                                                  connections=args.connections, tag="pg2")
        r0.stop()
        r1.stop()

        # Replication: an origin with --facts facts, pulled into SQLite and into PostgreSQL.
        origin = Node(work, "origin")
        nodes.append(origin)
        into_lite = Node(work, "into-lite")
        dbs.append(create_db())
        into_pg_url = _db_url(dbs[-1])
        into_pg = pg_node(work, "into-pg", into_pg_url)
        nodes += [into_lite, into_pg]
        for target in (into_lite, into_pg):
            peer_up(origin, target)
            peer_up(target, origin)
        load_facts(origin, args.facts)
        t_lite = replicate(into_lite, ["--db", str(into_lite.db)])
        t_pg = replicate(into_pg, ["--database-url", into_pg_url])
        rows = fact_rows(into_lite.db, received=True)
        if len(rows) != args.facts:
            sys.exit(f"only {len(rows)} of {args.facts} facts arrived in SQLite")
        with psycopg.connect(into_pg_url) as conn:
            row = conn.execute("SELECT COUNT(*) FROM facts WHERE received_from IS NOT NULL").fetchone()
        got = row[0] if row else 0
        if got != args.facts:
            sys.exit(f"only {got} of {args.facts} facts arrived in PostgreSQL")
        ceil_lite = insert_ceiling(rows, work)
        dbs.append(create_db())
        ceil_pg = insert_ceiling(rows, work, database=_db_url(dbs[-1]))
    finally:
        for n in nodes:
            n.stop()
        for name in dbs:
            drop_db(name)

    base = pulls["SQLite, 1 process"]["rps"]
    print(f"\nToken-verified pulls, limit {args.limit}, wrk -c{args.connections} -d{args.seconds}s in all "
          f"(split over the replicas), one fresh token per request; nothing pinned, {os.cpu_count()} cores shared "
          "by wrk, the node processes and PostgreSQL")
    print(f"{'':24}{'req/s':>9}  {'non-2xx':>7}  {'p99 ms':>7}  {'node µs/req':>11}  {'PG µs/req':>9}  "
          f"{'vs SQLite':>9}")
    for name, r in pulls.items():
        print(f"{name:24}{r['rps']:>9.0f}  {r['non2xx']:>7}  {r['p99_ms']:>7.1f}  {r['node_us']:>11.0f}  "
              f"{r['pg_us']:>9.0f}  {r['rps'] / base:>9.2f}")
    two = pulls["PostgreSQL, 2 replicas"]["rps"] / pulls["PostgreSQL, 1 replica"]["rps"]
    print(f"two replicas / one replica: {two:.2f}")
    n = args.facts
    print(f"\nReplication of {n} facts by `stigmem-node pull` (process start included):")
    print(f"into SQLite:     {n / t_lite:>8,.0f} facts/s   ceiling {n / ceil_lite:>8,.0f}   "
          f"ratio {ceil_lite / t_lite:.3f}")
    print(f"into PostgreSQL: {n / t_pg:>8,.0f} facts/s   ceiling {n / ceil_pg:>8,.0f}   "
          f"ratio {ceil_pg / t_pg:.3f}   vs SQLite {t_lite / t_pg:.2f}")


if __name__ == "__main__":
    main()
