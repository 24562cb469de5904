"""What a publisher pays per waiting long-poll subscriber, and how fast one commit wakes them all.

Starts a publisher (`stigmem-node serve`) and registers and approves S synthetic peers on it
(default 200; each its own Ed25519 key, signed declaration and well-known, served by the
bench; registered and approved through the API as an operator would).  The bounds
STIGMEM_LONG_POLL_PER_PEER and STIGMEM_LONG_POLL_MAX stay at their defaults (4 and 1000): one
subscriber is one peer, as in a real federation.  Each peer, caught up, sends
`GET /v1/federation/facts?cursor=<head>&wait=30` with its own fresh token, over its own
connection.  The bench reads the publisher's RSS (VmRSS) and open file descriptors
(/proc/<pid>/fd) idle (every peer has pulled once, connections closed), and while all S wait;
then asserts one fact through the API and times how long until each waiting request has its
answer with that fact (p50, p99, max, from just before the assert).  It repeats the round a few
times: the figures must not grow from round to round.  It also checks the per-peer bound: a
fifth waiting request of one peer is refused (429 too_many_waiting).

    python bench/longpoll_subscribers.py [--subscribers 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Node, free_port

from stigmem_node import declaration as decl_mod
from stigmem_node import tokens
from stigmem_node.clock import iso_seconds
from stigmem_node.encoding import b64url_encode, fingerprint, key_id

SCOPES = ["company", "public"]
WAIT_S = 30


class Peer:
    def __init__(self, i: int, base: str) -> None:
        self.key = Ed25519PrivateKey.generate()
        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key = b64url_encode(raw)
        self.key_id = key_id(raw)
        self.node_id = f"stigmem:node:bench-sub-{i}-{os.getpid()}"
        self.url = f"{base}/sub-{i}"

    def declaration(self) -> dict:
        fields = {"allowed_scopes": SCOPES, "federation_pubkey": self.public_key, "node_id": self.node_id,
                  "node_url": self.url, "signed_at": iso_seconds(datetime.now(UTC))}
        return {**fields, "declaration_sig": b64url_encode(self.key.sign(decl_mod.canonical_bytes(fields)))}

    def token(self, audience: str, path_qs: str) -> str:
        return tokens.mint(issuer=self.node_id, audience=audience, private_key=self.key, key_id=self.key_id,
                           scopes=SCOPES, now_ms=int(time.time() * 1000), ttl_ms=120_000, htm="GET", htu=path_qs)


def serve_well_knowns(peers: dict[str, Peer], port: int) -> uvicorn.Server:
    """One small server answering every synthetic peer's well-known (``<base>/sub-<i>/...``),
    which the publisher fetches when the peer registers."""

    async def well_known(request: Request) -> JSONResponse:
        p = peers[request.path_params["name"]]
        return JSONResponse({"version": "1.0", "node_id": p.node_id, "node_url": p.url, "auth": "required",
                             "federation": "enabled", "federation_pubkey": p.public_key, "federation_version": "2.1",
                             "pubkey_fingerprint": fingerprint(p.public_key), "previous_keys": [],
                             "declaration": p.declaration()})

    app = Starlette(routes=[Route("/{name}/.well-known/stigmem", well_known)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server


def fd_kinds(pid: int) -> dict[str, int]:
    """The publisher's open files by kind (socket, pipe, anon_inode, or the file's suffix)."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":", 1)[0] if ":" in target and not target.startswith("/") else Path(target).suffix
        kinds[kind or target] = kinds.get(kind or target, 0) + 1
    return kinds


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def one_poll(client: httpx.AsyncClient, peer: Peer, audience: str, cursor: str) -> tuple[float, int, int]:
    path = f"/v1/federation/facts?limit=100&cursor={quote(cursor, safe='')}&wait={WAIT_S}"
    res = await client.get(path, headers={"Authorization": f"Bearer {peer.token(audience, path)}"})
    return time.perf_counter(), res.status_code, len(res.json().get("facts", [])) if res.status_code == 200 else 0


async def round_(node: Node, peers: list[Peer], audience: str, cursor: str, n_round: int) -> dict:
    pid = node.proc.pid
    before = {"rss": node.rss_mib(), "fds": fds(pid)}
    limits = httpx.Limits(max_connections=len(peers) + 10, max_keepalive_connections=0)
    # One connection per subscriber, as separate subscriber processes would have.
    clients = [httpx.AsyncClient(base_url=node.url, timeout=WAIT_S + 30, limits=limits) for _ in peers]
    try:
        tasks = [asyncio.create_task(one_poll(c, p, audience, cursor)) for c, p in zip(clients, peers, strict=True)]
        deadline = time.monotonic() + 30
        while (fds(pid) < before["fds"] + len(peers) and time.monotonic() < deadline
               and not any(t.done() for t in tasks)):
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # every request checked, its page read, and waiting
        early = [t for t in tasks if t.done()]
        during = {"rss": node.rss_mib(), "fds": fds(pid)}
        with node.client() as c:  # the assert, from another connection (a thread: the loop must run)
            t0 = time.perf_counter()
            res = await asyncio.to_thread(c.post, "/v1/facts", json={"facts": [{
                "entity": f"stigmem://bench/longpoll/{n_round}", "relation": "memory:note",
                "value": {"type": "string", "v": f"round {n_round}"}, "source": "stigmem://bench/agent",
                "scope": "public"}]})
            res.raise_for_status()
            assert_ms = (time.perf_counter() - t0) * 1000
        answers = await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    await asyncio.sleep(1.0)
    after = {"rss": node.rss_mib(), "fds": fds(pid), "kinds": fd_kinds(pid)}
    lags = [(t - t0) * 1000 for t, status, got in answers if status == 200 and got == 1]
    return {"before": before, "during": during, "after": after, "early": len(early), "assert_ms": assert_ms,
            "answered": len(lags),
            "statuses": sorted({s for _, s, _ in answers}), "lags_ms": lags,
            "new_cursor": res.json()["facts"][0]["id"]}


async def per_peer_bound(node: Node, peer: Peer, audience: str, cursor: str) -> list[int]:
    """Five waiting requests from one peer: the fifth is refused (the default bound is 4)."""
    async with httpx.AsyncClient(base_url=node.url, timeout=WAIT_S + 30) as client:
        tasks = []
        for _ in range(5):
            path = f"/v1/federation/facts?limit=100&cursor={quote(cursor, safe='')}&wait=2"
            tasks.append(asyncio.create_task(client.get(
                path, headers={"Authorization": f"Bearer {peer.token(audience, path)}"})))
            await asyncio.sleep(0.2)
        return sorted(r.status_code for r in await asyncio.gather(*tasks))


async def head_cursor(node: Node, peer: Peer, audience: str) -> str:
    cursor = ""
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
        while True:
            path = "/v1/federation/facts?limit=500" + (f"&cursor={quote(cursor, safe='')}" if cursor else "")
            page = (await client.get(path, headers={"Authorization": f"Bearer {peer.token(audience, path)}"})).json()
            cursor = page["cursor"] or cursor
            if not page["has_more"]:
                return cursor


async def warm_up(node: Node, peers: list[Peer], audience: str, cursor: str) -> None:
    """Every peer pulls once (caught up, no wait), so that idle figures include what a known peer costs."""
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
        for p in peers:
            path = f"/v1/federation/facts?limit=100&cursor={quote(cursor, safe='')}"
            (await client.get(path, headers={"Authorization": f"Bearer {p.token(audience, path)}"})).raise_for_status()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscribers", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stigmem-bench-longpoll-"))
    node = Node(work, "pub")
    try:
        audience = node.well_known()["node_id"]
        base = f"http://127.0.0.1:{free_port()}"
        peers = [Peer(i, base) for i in range(args.subscribers)]
        wk = serve_well_knowns({p.url.rsplit("/", 1)[1]: p for p in peers}, int(base.rsplit(":", 1)[1]))
        t0 = time.perf_counter()
        with node.client() as c:
            for p in peers:
                res = c.post("/v1/federation/peers", json=p.declaration())
                if res.json()["status"] != "pending_approval":
                    sys.exit(f"registration of a subscriber failed: {res.text}")
                c.post(f"/v1/federation/peers/{res.json()['peer_id']}/approve",
                       json={"pubkey_fingerprint": fingerprint(p.public_key)}).raise_for_status()
            c.post("/v1/facts", json={"facts": [{"entity": "stigmem://bench/longpoll/seed", "relation": "memory:note",
                                                  "value": {"type": "string", "v": "seed"},
                                                  "source": "stigmem://bench/agent", "scope": "public"}]}
                   ).raise_for_status()
        print(f"{args.subscribers} peers registered and approved in {time.perf_counter() - t0:.1f} s", flush=True)
        wk.should_exit = True
        idle = {"rss": node.rss_mib(), "fds": fds(node.proc.pid)}
        cursor = asyncio.run(head_cursor(node, peers[0], audience))
        asyncio.run(warm_up(node, peers, audience, cursor))
        rounds = []
        for r in range(args.rounds):
            cursor = asyncio.run(head_cursor(node, peers[0], audience))
            rnd = asyncio.run(round_(node, peers, audience, cursor, r))
            rounds.append(rnd)
            lags = rnd["lags_ms"] or [float("nan")]
            print(f"round {r + 1}: publisher RSS {rnd['before']['rss']:.1f} -> {rnd['during']['rss']:.1f} MiB "
                  f"waiting -> {rnd['after']['rss']:.1f} after; fds {rnd['before']['fds']} -> "
                  f"{rnd['during']['fds']} -> {rnd['after']['fds']}; {rnd['answered']}/{args.subscribers} "
                  f"answered with the fact (answered early: {rnd['early']}, statuses {rnd['statuses']}); "
                  f"assert answered in {rnd['assert_ms']:.0f} ms; lag p50 {percentile(lags, 50):.0f} ms, "
                  f"p99 {percentile(lags, 99):.0f} ms, "
                  f"max {max(lags):.0f} ms", flush=True)
        cursor = asyncio.run(head_cursor(node, peers[0], audience))
        bound = asyncio.run(per_peer_bound(node, peers[0], audience, cursor))
    finally:
        node.stop()

    n = args.subscribers
    last = rounds[-1]
    print(f"\n{n} subscribers, each one peer with one waiting long-poll (wait={WAIT_S}, "
          "STIGMEM_LONG_POLL_PER_PEER and _MAX at their defaults, 4 and 1000)")
    print(f"publisher idle after registering {n} peers: RSS {idle['rss']:.1f} MiB, {idle['fds']} fds")
    for i, rnd in enumerate(rounds, 1):
        d_rss = (rnd["during"]["rss"] - rnd["before"]["rss"]) * 1024 / n
        d_fds = (rnd["during"]["fds"] - rnd["before"]["fds"]) / n
        print(f"round {i}: per waiting subscriber {d_rss:5.1f} KiB RSS, {d_fds:.2f} fds")
    print(f"open files after each round: {[rnd['after']['kinds'] for rnd in rounds]}")
    print(f"after the last round: RSS {last['after']['rss']:.1f} MiB, {last['after']['fds']} fds "
          f"(first round before: {rounds[0]['before']['rss']:.1f} MiB, {rounds[0]['before']['fds']} fds)")
    print(f"five waiting requests of one peer: statuses {bound} (the fifth refused: {bound.count(429) == 1})")


if __name__ == "__main__":
    main()
