"""Local assert throughput: POST /v1/facts batches of 500, against the raw insert ceiling
measured in the same run (the same rows inserted into an empty schema in one transaction).

    python bench/assert_facts.py [--facts 20000]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Node  # noqa: E402

from stigmem_node.store.db import Database  # noqa: E402
from stigmem_node.store.facts import INSERT_COLS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=20_000)
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
    with sqlite3.connect(a.db) as conn:
        rows = conn.execute(f"SELECT {INSERT_COLS} FROM facts").fetchall()
    ceiling_db = Database(work / "ceiling.db")
    marks = ",".join("?" * len(INSERT_COLS.split(",")))
    t0 = time.perf_counter()
    with ceiling_db.transaction():
        ceiling_db.conn.executemany(f"INSERT INTO facts ({INSERT_COLS}) VALUES ({marks})", rows)
    ceiling = time.perf_counter() - t0
    n = len(rows)
    print(f"{n} facts asserted over HTTP in batches of 500: {elapsed:.2f} s, server CPU {cpu / n * 1e6:.0f} µs/fact, "
          f"RSS {rss:.0f} MiB")
    print(f"asserted:               {n / elapsed:>9,.0f} facts/s")
    print(f"raw insert, 1 tx:       {n / ceiling:>9,.0f} facts/s (ceiling)")
    print(f"ratio:                  {(n / elapsed) / (n / ceiling):>9.3f}")


if __name__ == "__main__":
    main()
