"""End-to-end replication rate, against the local insert ceiling measured in the same run.

Three nodes; 10,000 facts (company and public) on A; B and C each registered on A and A on
each, all approved.  Times `stigmem-node pull` on B until every fact is there (a cron job:
process start included), then one pass of C's subscriber in a running node (what
`serve --pull-interval` does; its check workers already up), then, as the ceiling,
inserts the very same rows into an empty copy of the schema in one transaction (the best
of three).

    python bench/replicate.py [--facts 10000]
"""

from __future__ import annotations

import argparse
import asyncio
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
    a, b, c = Node(work, "a"), Node(work, "b"), Node(work, "c")
    try:
        for sub in (b, c):
            peer_up(a, sub)
            peer_up(sub, a)
            sub.stop()  # B pulls as a cron job would, against its database; C in this process
        load_facts(a, args.facts)
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "stigmem_node", "pull", "--json", "--db", str(b.db)],
                             capture_output=True, text=True, timeout=600)
        elapsed = time.perf_counter() - t0
        if res.returncode != 0:
            sys.exit(f"pull failed: {res.stdout}{res.stderr}")
        rows = fact_rows(b.db, received=True)
        got = len(rows)
        running, got_c = pass_in_a_running_node(c.db)
    finally:
        a.stop()
        b.stop()
        c.stop()
    if got != args.facts or got_c != args.facts:
        sys.exit(f"only {got} and {got_c} of {args.facts} facts arrived")

    ceiling = insert_ceiling(rows, work, runs=3)
    rate, ceil_rate, running_rate = got / elapsed, got / ceiling, got_c / running
    print(f"{got} facts replicated A -> B by `stigmem-node pull` (process start included): {elapsed:.2f} s; "
          f"A -> C by one pass of a running node: {running:.2f} s")
    print(f"end to end, pull:  {rate:>9,.0f} facts/s   ratio {rate / ceil_rate:.3f}")
    print(f"one pass, running: {running_rate:>9,.0f} facts/s   ratio {running_rate / ceil_rate:.3f}")
    print(f"local insert, 1 tx:{ceil_rate:>9,.0f} facts/s (ceiling)")


def pass_in_a_running_node(db: Path) -> tuple[float, int]:
    """Seconds for one pass of the node's subscriber over its peers, the node already open and
    its check workers up (as in `serve`), and the facts it then holds from peers."""
    from stigmem_node.config import Settings
    from stigmem_node.node import Node as LocalNode
    from stigmem_node.page_check import PagePolicy
    from stigmem_node.replication.transport import parse_page

    node = LocalNode(Settings(db_path=db, log_level="warning"))
    try:
        empty = parse_page(b'{"v":2,"facts":[],"cursor":null,"has_more":false}', 1)

        async def warm() -> None:  # every check worker is up
            await asyncio.gather(*(node.checker.check(PagePolicy("warm", ()), [], empty)
                                   for _ in range(node.checker.parallel)))

        asyncio.run(warm())
        t0 = time.perf_counter()
        result = asyncio.run(node.subscriber().run_pass())
        elapsed = time.perf_counter() - t0
        if not result.ok:
            sys.exit(f"the pass failed: {result.as_dict()}")
    finally:
        node.close()
    return elapsed, len(fact_rows(db, received=True))


if __name__ == "__main__":
    main()
