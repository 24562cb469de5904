"""Local assert throughput: POST /v1/facts batches of 500, against the raw insert ceiling
measured in the same run (the same rows inserted into an empty schema in one transaction).

    python bench/assert_facts.py [--facts 20000] [--rounds 3] [--ceilings 3] [--cores one|every|both]

Each round asserts ``--facts`` new facts over HTTP, then inserts that round's rows into new
empty databases ``--ceilings`` times; the fastest insert is the round's ceiling.  Pairing
each round with a ceiling measured right after it keeps the two in the same stretch of
machine time (on a shared machine, throughput moves by tens of percent from one minute to
the next); the median of the rounds' ratios is the figure of record.

The node runs twice: pinned to one core (``taskset -c 0``: what a one-core node does), and
free on every core (where it signs a batch on every core, ``stigmem_node.signing``).  The
client is a single connection that waits for each answer, as a bulk importer does.  Two
ratios per round: wall-clock rates, and CPU time per fact (the server's against the
ceiling's), which other processes on the machine disturb far less.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Node


def ceiling(rows: list[tuple], db_path: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) to insert ``rows`` into an empty schema in one transaction
    (what ``_common.insert_ceiling`` measures, with its CPU time too)."""
    from stigmem_node.store import open_database
    from stigmem_node.store.facts import INSERT_COLS

    db = open_database(db_path)
    marks = ",".join("?" * len(INSERT_COLS.split(",")))
    t0, c0 = time.perf_counter(), time.process_time()
    with db.transaction():
        db.executemany(f"INSERT INTO facts ({INSERT_COLS}) VALUES ({marks})", rows)  # noqa: S608 - constant text
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    db.close()
    return elapsed, cpu


def rows_after(db: Path, seq: int) -> list[tuple]:
    """The fact rows stored after ``seq``, in insert-column order."""
    from stigmem_node.store.facts import INSERT_COLS

    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT {INSERT_COLS} FROM facts WHERE seq > ? ORDER BY seq",  # noqa: S608 - constant
                            (seq,)).fetchall()


def head(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM facts").fetchone()[0])


def batches(round_no: int, n: int) -> list[list[dict]]:
    return [[{"entity": f"stigmem://bench/item/{round_no}/{i}", "relation": "memory:note",
              "value": {"type": "number", "v": i} if i % 2 else {"type": "string", "v": f"fact {i}"},
              "source": "stigmem://bench/agent", "confidence": 0.9, "scope": "company"}
             for i in range(start, min(n, start + 500))] for start in range(0, n, 500)]


def run(work: Path, label: str, cpu: int | None, args: argparse.Namespace) -> list[float]:
    """The rounds on one node; prints each and returns their wall-clock ratios."""
    work = work / ("one-core" if cpu is not None else "every-core")
    node = Node(work, "a", cpu=cpu)
    ratios = []
    try:
        print(f"-- {label}")
        for r in range(args.rounds):
            before = head(node.db)
            with node.client() as c:
                cpu0 = node.cpu_seconds()
                t0 = time.perf_counter()
                for batch in batches(r, args.facts):
                    c.post("/v1/facts", json={"facts": batch}).raise_for_status()
                elapsed = time.perf_counter() - t0
                used = node.cpu_seconds() - cpu0
            rows = rows_after(node.db, before)
            n = len(rows)
            ceil_s, ceil_cpu = min(ceiling(rows, work / f"ceiling-{r}-{i}.db")
                                   for i in range(max(1, args.ceilings)))
            ratios.append(ceil_s / elapsed)
            print(f"round {r + 1}: {n / elapsed:>7,.0f} facts/s asserted, ceiling {n / ceil_s:>7,.0f}: "
                  f"ratio {ceil_s / elapsed:.3f}; CPU {used / n * 1e6:5.1f} µs/fact server, "
                  f"{ceil_cpu / n * 1e6:4.1f} ceiling: ratio {ceil_cpu / used:.3f}")
        print(f"{label}: median ratio {statistics.median(ratios):.3f} (range {min(ratios):.3f} to {max(ratios):.3f}), "
              f"RSS {node.rss_mib():.0f} MiB")
    finally:
        node.stop()
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=20_000, help="facts asserted per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ceilings", type=int, default=3, help="ceiling inserts per round; the fastest counts")
    ap.add_argument("--cores", choices=("one", "every", "both"), default="both")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stigmem-bench-assert-"))
    print(f"{args.rounds} rounds of {args.facts:,} facts over HTTP in batches of 500, each against the fastest "
          f"of {args.ceilings} inserts of its rows in one transaction")
    if args.cores in ("one", "both"):
        run(work, "one core (server pinned to CPU 0)", 0, args)
    if args.cores in ("every", "both"):
        run(work, "every core (server not pinned)", None, args)


if __name__ == "__main__":
    main()
