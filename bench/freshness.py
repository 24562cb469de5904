"""Freshness: how long a fact asserted on A takes to be stored on B, with and without long-poll.

Two `serve` processes, A and B, federated.  A fact is asserted on A every 1/RATE seconds
(200 at 10/s by default); B pulls A on its schedule.  For each fact the lag is B's
``received_at`` minus A's ``timestamp`` (both nodes read this machine's clock).  Three runs
in one process, one after the other:

- **interval**: B polls every ``--interval`` seconds (``--pull-wait 0``), as reference nodes
  do (every 30 s there; shorter here so the run stays short);
- **long-poll**: B follows A (``--pull-wait 25``) with the same interval, so the interval
  plays no part;
- **notify**: B polls by the interval only (``--pull-wait 0``), and A notifies it of each
  commit (``--notify-peers``): a signed ``POST /v1/federation/notify``, then B pulls.

It also counts A's fact requests per second during each run (load on the publisher).

    python bench/freshness.py [--facts 200] [--rate 10] [--interval 2]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Node, peer_up


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run(work: Path, name: str, *, facts: int, rate: float, interval: float, wait_s: int,
        notify: bool = False) -> dict:
    a = Node(work / name, "a", cpu=0, args=("--notify-peers",) if notify else ())
    b = Node(work / name, "b", cpu=1, args=("--pull-interval", str(interval), "--pull-wait", str(wait_s)))
    try:
        peer_up(a, b)
        peer_up(b, a)
        time.sleep(max(3.0, interval + 1))  # B has found A and made its first pass
        requests_before = _pull_requests(a)
        ids: list[str] = []
        start = time.perf_counter()
        with a.client() as c:
            for i in range(facts):
                due = start + i / rate
                if (delay := due - time.perf_counter()) > 0:
                    time.sleep(delay)
                res = c.post("/v1/facts", json={"entity": f"urn:fresh:{name}:{i}", "relation": "bench:seq",
                                                "value": {"type": "number", "v": i}, "source": "bench",
                                                "scope": "public"})
                res.raise_for_status()
                ids.append(res.json()["id"])
        elapsed = time.perf_counter() - start
        deadline = time.monotonic() + interval + 60
        while (got := _count(b.db, name)) < len(ids):
            if time.monotonic() > deadline:
                sys.exit(f"{name}: only {got} of {len(ids)} facts reached B")
            time.sleep(0.1)
        requests = _pull_requests(a) - requests_before
    finally:
        a.stop()
        b.stop()
    with sqlite3.connect(b.db) as conn:
        rows = conn.execute("SELECT timestamp, received_at FROM facts"
                            " WHERE entity LIKE ? AND received_from IS NOT NULL", (f"urn:fresh:{name}:%",)).fetchall()
    lags = [_ts(received) - _ts(asserted) for asserted, received in rows]
    return {"name": name, "facts": len(lags), "p50_s": _pct(lags, 50), "p99_s": _pct(lags, 99),
            "mean_s": statistics.fmean(lags), "max_s": max(lags), "pull_requests_per_s": requests / elapsed}


def _count(db: Path, name: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM facts WHERE entity LIKE ? AND received_from IS NOT NULL",
                            (f"urn:fresh:{name}:%",)).fetchone()[0]


def _pull_requests(a: Node) -> float:
    """A's count of answered pull requests, from its own metrics."""
    import httpx

    text = httpx.get(a.url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("stigmem_http_requests_total{") and 'route="/v1/federation/facts"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=200)
    ap.add_argument("--rate", type=float, default=10.0, help="asserts per second on A")
    ap.add_argument("--interval", type=float, default=2.0, help="B's pull interval (s)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stigmem-bench-fresh-"))
    results = [run(work, "interval", facts=args.facts, rate=args.rate, interval=args.interval, wait_s=0),
               run(work, "long-poll", facts=args.facts, rate=args.rate, interval=args.interval, wait_s=25),
               run(work, "notify", facts=args.facts, rate=args.rate, interval=args.interval, wait_s=0, notify=True)]
    print(f"{args.facts} asserts at {args.rate:g}/s on A; B's pull interval {args.interval:g} s")
    print(f"{'mode':<10} {'p50 lag':>9} {'p99 lag':>9} {'max':>8} {'pulls/s at A':>13}")
    for r in results:
        print(f"{r['name']:<10} {r['p50_s'] * 1000:>7.0f}ms {r['p99_s'] * 1000:>7.0f}ms {r['max_s'] * 1000:>6.0f}ms"
              f" {r['pull_requests_per_s']:>13.1f}")
    base, fast, notified = results
    print(f"p99 ratio long-poll / interval: {fast['p99_s'] / base['p99_s']:.3f}; "
          f"notify / interval: {notified['p99_s'] / base['p99_s']:.3f}")


if __name__ == "__main__":
    main()
