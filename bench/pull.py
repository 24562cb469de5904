"""Token-verified pulls per second, against the floor measured in the same run.

Starts a node, registers and approves a peer, loads 10,000 facts, pre-mints one fresh
token per request, and drives `GET /v1/federation/facts` with wrk (server pinned to CPU 0,
wrk to CPU 1).  In the same run it serves the same pages from the same app with peer
authentication replaced by one raw Ed25519 verification of a fixed signature (the floor:
the page plus one signature check; bench/floor_app.py).  Prints requests/s, server CPU
per request, and the ratios.

    python bench/pull.py [--seconds 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Node, free_port, peer_up, pinned, wrk

from stigmem_node import tokens
from stigmem_node.encoding import b64url_decode


def _cpu(pid: int) -> float:
    import os

    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_facts(node: Node, n: int, progress: Callable[[int], None] | None = None) -> None:
    """Assert ``n`` facts on ``node`` in batches of 500; ``progress(done)`` after each batch."""
    with node.client() as c:
        for start in range(0, n, 500):
            batch = [{"entity": f"stigmem://bench/item/{i}", "relation": "memory:note",
                      "value": {"type": "string", "v": f"fact number {i} " + "x" * 120},
                      "source": "stigmem://bench/agent", "confidence": 0.9,
                      "scope": "company" if i % 2 else "public"} for i in range(start, min(n, start + 500))]
            c.post("/v1/facts", json={"facts": batch}).raise_for_status()
            if progress is not None:
                progress(start + len(batch))


def mint_tokens(path: Path, count: int, *, iss: str, sub: str, key: Ed25519PrivateKey, key_id: str,
                req_path: str) -> None:
    """``count`` tokens, one per line, in the order wrk presents them.  As a subscriber mints
    each token when it makes the request, their ``iat`` (and so their time-ordered nonces)
    advance: one millisecond every 10 tokens, a few seconds at most, well within the leeway."""
    now = int(time.time() * 1000)
    with open(path, "w") as fh:
        for i in range(count):
            fh.write(tokens.mint(issuer=iss, audience=sub, private_key=key, key_id=key_id, scopes=["company", "public"],
                                 now_ms=now + i // 10, ttl_ms=3_600_000, htm="GET", htu=req_path) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--facts", type=int, default=10_000)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="stigmem-bench-pull-"))
    a = Node(work, "a", cpu=0)
    b = Node(work, "b")
    floor = None
    try:
        peer_up(a, b)
        b_info = b.well_known()
        with sqlite3.connect(b.db) as conn:
            (priv,) = conn.execute("SELECT private_key FROM node_keys WHERE status='active'").fetchone()
        b_key = Ed25519PrivateKey.from_private_bytes(b64url_decode(priv))
        b.stop()
        load_facts(a, args.facts)
        print(f"node {a.url}: {args.facts} facts loaded; RSS {a.rss_mib():.0f} MiB")

        floor_port = free_port()
        floor = subprocess.Popen(pinned([sys.executable, str(Path(__file__).parent / "floor_app.py"), str(a.db),
                                         str(floor_port)], 0))
        floor_url = f"http://127.0.0.1:{floor_port}"
        for _ in range(200):
            try:
                httpx.get(floor_url + "/v1/federation/facts?limit=1", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)

        results = {}
        budget = 9000 * args.seconds  # tokens per cell: more than the server can take
        for limit in (100, 10):
            path = f"/v1/federation/facts?limit={limit}"
            tok = work / f"tokens-{limit}.txt"
            mint_tokens(tok, budget, iss=b_info["node_id"], sub=a.well_known()["node_id"], key=b_key,
                        key_id=b_info["key_id"], req_path=path)
            cpu0 = a.cpu_seconds()
            res = wrk(a.url, path, tok, seconds=args.seconds, connections=args.connections, cpu=1)
            res["cpu_us"] = (a.cpu_seconds() - cpu0) / max(res["requests"], 1) * 1e6
            res["busy"] = (a.cpu_seconds() - cpu0) / args.seconds
            fcpu0 = _cpu(floor.pid)
            floor_res = wrk(floor_url, path, tok, seconds=args.seconds, connections=args.connections, cpu=1)
            floor_res["cpu_us"] = (_cpu(floor.pid) - fcpu0) / max(floor_res["requests"], 1) * 1e6
            results[limit] = (res, floor_res)
            if res["requests"] >= budget:
                print("warning: wrk ran out of tokens; raise the budget")
        rss = a.rss_mib()
    finally:
        if floor is not None:  # also when a run failed: the floor would hold the terminal's pipe
            floor.terminate()
            floor.wait(10)
        a.stop()
        b.stop()

    print(f"\nwrk -t1 -c{args.connections} -d{args.seconds}s, server on CPU 0, wrk on CPU 1; "
          "one fresh token per request")
    print(f"{'limit':>5}  {'token-verified req/s':>20}  {'non-2xx':>7}  {'p99 ms':>6}  {'µs CPU/req':>10}  "
          f"{'floor req/s':>11}  {'floor µs CPU':>12}  {'ratio':>5}  {'server busy':>11}")
    for limit, (res, fl) in results.items():
        print(f"{limit:>5}  {res['rps']:>20.0f}  {res['non2xx']:>7}  {res['p99_ms']:>6.1f}  {res['cpu_us']:>10.0f}  "
              f"{fl['rps']:>11.0f}  {fl['cpu_us']:>12.0f}  {res['rps'] / fl['rps']:>5.2f}  {res['busy']:>10.0%}")
    print(f"RSS after load: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
