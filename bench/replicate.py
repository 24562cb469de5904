"""End-to-end replication rate, against the local insert ceiling measured in the same run.

Two nodes; 10,000 facts (company and public) on A; B registered on A and A on B, both
approved.  Times `stigmem-node pull` on B until every fact is there, then, as the
ceiling, inserts the very same rows into an empty copy of the schema in one transaction.

    python bench/replicate.py [--facts 10000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Node, fact_rows, insert_ceiling, peer_up
from pull import load_facts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=10_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stigmem-bench-repl-"))
    a, b = Node(work, "a"), Node(work, "b")
    try:
        peer_up(a, b)
        peer_up(b, a)
        load_facts(a, args.facts)
        b.stop()  # the pull runs as a cron job would, against B's database
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "stigmem_node", "pull", "--json", "--db", str(b.db)],
                             capture_output=True, text=True, timeout=600)
        elapsed = time.perf_counter() - t0
        if res.returncode != 0:
            sys.exit(f"pull failed: {res.stdout}{res.stderr}")
        rows = fact_rows(b.db, received=True)
        got = len(rows)
    finally:
        a.stop()
        b.stop()
    if got != args.facts:
        sys.exit(f"only {got} of {args.facts} facts arrived")

    ceiling = insert_ceiling(rows, work)
    rate, ceil_rate = got / elapsed, got / ceiling
    print(f"{got} facts replicated A -> B by `stigmem-node pull` (process start included): {elapsed:.2f} s")
    print(f"end to end:        {rate:>9,.0f} facts/s")
    print(f"local insert, 1 tx:{ceil_rate:>9,.0f} facts/s (ceiling)")
    print(f"ratio:             {rate / ceil_rate:>9.3f}")


if __name__ == "__main__":
    main()
