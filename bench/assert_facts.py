"""Local assert throughput: POST /v1/facts batches of 500, against the raw insert ceiling
measured in the same run (the same rows inserted into an empty schema in one transaction).

    python bench/assert_facts.py [--facts 20000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Node, fact_rows, insert_ceiling


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
    rows = fact_rows(a.db)
    ceiling = insert_ceiling(rows, work)
    n = len(rows)
    print(f"{n} facts asserted over HTTP in batches of 500: {elapsed:.2f} s, server CPU {cpu / n * 1e6:.0f} µs/fact, "
          f"RSS {rss:.0f} MiB")
    print(f"asserted:               {n / elapsed:>9,.0f} facts/s")
    print(f"raw insert, 1 tx:       {n / ceiling:>9,.0f} facts/s (ceiling)")
    print(f"ratio:                  {(n / elapsed) / (n / ceiling):>9.3f}")


if __name__ == "__main__":
    main()
