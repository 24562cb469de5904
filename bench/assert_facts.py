"""Local assert throughput: POST /v1/facts batches of 500, against the raw insert ceiling
measured in the same run (the same rows inserted into an empty schema in one transaction).

    python bench/assert_facts.py [--facts 20000] [--ceilings 3]

The ceiling is the fastest of ``--ceilings`` inserts, each into a new empty database.  Two
ratios are printed: wall-clock rates (the figure of record), and CPU time per fact (the
server's against the ceiling's), which other processes on the machine disturb far less.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Node, fact_rows


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=20_000)
    ap.add_argument("--ceilings", type=int, default=3, help="ceiling inserts to run; the fastest counts")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stigmem-bench-assert-"))
    a = Node(work, "a", cpu=0)
    try:
        batches = [[{"entity": f"stigmem://bench/item/{i}", "relation": "memory:note",
                     "value": {"type": "number", "v": i} if i % 2 else {"type": "string", "v": f"fact {i}"},
                     "source": "stigmem://bench/agent", "confidence": 0.9, "scope": "company"}
                    for i in range(start, min(args.facts, start + 500))] for start in range(0, args.facts, 500)]
        with a.client() as c:
            cpu0 = a.cpu_seconds()
            t0 = time.perf_counter()
            for batch in batches:
                c.post("/v1/facts", json={"facts": batch}).raise_for_status()
            elapsed = time.perf_counter() - t0
            cpu = a.cpu_seconds() - cpu0
        rss = a.rss_mib()
    finally:
        a.stop()
    rows = fact_rows(a.db)
    runs = [ceiling(rows, work / f"ceiling-{i}.db") for i in range(max(1, args.ceilings))]
    ceil_s, ceil_cpu = min(runs)
    n = len(rows)
    print(f"{n} facts asserted over HTTP in batches of 500: {elapsed:.2f} s, server CPU {cpu / n * 1e6:.0f} µs/fact, "
          f"RSS {rss:.0f} MiB")
    print(f"asserted:               {n / elapsed:>9,.0f} facts/s")
    print(f"raw insert, 1 tx:       {n / ceil_s:>9,.0f} facts/s (ceiling, fastest of {len(runs)}: "
          f"{', '.join(f'{n / r[0]:,.0f}' for r in runs)})")
    print(f"ratio:                  {(n / elapsed) / (n / ceil_s):>9.3f}")
    print(f"CPU per fact:           {cpu / n * 1e6:>9.1f} µs server, {ceil_cpu / n * 1e6:.1f} µs ceiling: "
          f"ratio {ceil_cpu / cpu:.3f}")


if __name__ == "__main__":
    main()
