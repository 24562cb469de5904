"""Three `stigmem-node serve` processes on one PostgreSQL database are one node.

Every test starts three real replicas together on a fresh database (one identity, one peer
registry, one audit trail, one nonce cache) and checks a guarantee black-box, over HTTP
and the CLI:

a. a token is accepted at most once across the replicas;
b. a suspension, revocation or key rotation made through any replica, or the CLI, applies
   on every replica's next request;
c. the audit hash chain stays valid under concurrent writes from every replica;
d. a peer is pulled by one replica at a time, and when that replica is killed mid-pull
   another takes over within an interval, losing and duplicating nothing;
e. failure limits and audit budgets are per replica: at most N times one replica's bound.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from stigmem_node import origin
from stigmem_node.keys import public_key_from_b64
from tests.fakepeer import FakePeer
from tests.nodes import RunningNode, free_port, run_cli, stop_all

psycopg = pytest.importorskip("psycopg")
pytestmark = [pytest.mark.slow, pytest.mark.postgres_only]

PEERS = "/v1/federation/peers"
PULL = "/v1/federation/facts?limit=5"


class Replicas:
    """N replicas of one node on one PostgreSQL database, started together."""

    def __init__(self, workdir: Path, url: str, n: int = 3, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.url = url
        self.ports = [free_port() for _ in range(n)]
        self.env = {"STIGMEM_DATABASE_URL": url, "STIGMEM_API_KEY_PEPPER": f"1:{secrets.token_hex(32)}",
                    "STIGMEM_NODE_URL": f"http://127.0.0.1:{self.ports[0]}", **(env or {})}
        self.nodes: list[RunningNode] = [None] * n  # type: ignore[list-item]
        errors: list[BaseException] = []

        def start(i: int) -> None:
            try:
                self.nodes[i] = RunningNode(workdir / f"r{i}", f"r{i}", env=self.env, args=args, port=self.ports[i])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if errors:
            self.stop()
            raise errors[0]
        keys = [node.api_key for node in self.nodes if node.api_key]
        assert len(keys) == 1, "exactly one replica creates the first admin key"
        self.api_key = keys[0]
        for node in self.nodes:
            node.api_key = self.api_key

    def __getitem__(self, i: int) -> RunningNode:
        return self.nodes[i]

    def __iter__(self):
        return iter(self.nodes)

    def cli(self, *args: str) -> Any:
        res = run_cli(*args, "--json", "--database-url", self.url, env={"STIGMEM_API_KEY_PEPPER":
                                                                        self.env["STIGMEM_API_KEY_PEPPER"]})
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def stop(self) -> None:
        stop_all([n for n in self.nodes if n is not None], wait=True)


@pytest.fixture
def replicas(tmp_path: Path, engine):
    made: list[Replicas] = []

    def start(**kw: Any) -> Replicas:
        r = Replicas(tmp_path, engine.url("a", empty=True), **kw)
        made.append(r)
        return r

    yield start
    for r in made:
        r.stop()


def _federate(a: Replicas, b) -> dict:
    """B registered on A (through replica 1, approved through replica 2) and A on B."""
    wk_b = b.well_known()
    with a[1].client() as c:
        res = c.post(PEERS, json=wk_b["declaration"])
        assert res.status_code == 201, res.text
        peer_id = res.json()["peer_id"]
    with a[2].client() as c:
        ok = c.post(f"{PEERS}/{peer_id}/approve", json={"pubkey_fingerprint": wk_b["pubkey_fingerprint"]})
        assert ok.status_code == 200, ok.text
    wk_a = a[0].well_known()
    with b.client() as c:
        res = c.post(PEERS, json=wk_a["declaration"])
        assert res.status_code == 201, res.text
        ok = c.post(f"{PEERS}/{res.json()['peer_id']}/approve", json={"pubkey_fingerprint": wk_a["pubkey_fingerprint"]})
        assert ok.status_code == 200, ok.text
    return {"peer_id": peer_id, "a_node_id": wk_a["node_id"], "b_node_id": wk_b["node_id"]}


def _token(b, a_node_id: str, path: str = PULL) -> str:
    res = b.cli("token", "mint", "--peer", a_node_id, "--method", "GET", "--path", path)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def _get(node: RunningNode, path: str, token: str, addr: str | None = None) -> httpx.Response:
    """One request on a fresh connection (from ``addr``, a loopback address, if given)."""
    transport = httpx.HTTPTransport(local_address=addr) if addr else None
    with httpx.Client(base_url=node.url, timeout=30, transport=transport) as c:
        return c.get(path, headers={"Authorization": f"Bearer {token}"})


def test_a_token_is_accepted_at_most_once_across_replicas(replicas, start_node):
    a, b = replicas(), start_node("b")
    fed = _federate(a, b)
    assert _get(a[0], PULL, _token(b, fed["a_node_id"])).status_code == 200  # B can pull at all
    for round_ in range(3):  # each round from an address of its own (49 failures stay under the limits)
        token, addr = _token(b, fed["a_node_id"]), f"127.0.0.{10 + round_}"
        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(lambda i: _get(a[i % 3], PULL, token, addr), range(50)))
        statuses = Counter(r.status_code for r in answers)
        assert statuses == Counter({401: 49, 200: 1}), statuses
        assert {r.json()["error"] for r in answers if r.status_code == 401} == {"nonce_already_seen"}


def test_b_status_changes_and_key_rotation_apply_on_every_replica_at_once(replicas, start_node):
    a, b = replicas(), start_node("b")
    fed = _federate(a, b)

    def pulls() -> list[int]:
        return [_get(node, PULL, _token(b, fed["a_node_id"])).status_code for node in a]

    assert pulls() == [200, 200, 200]
    with a[0].client() as c:
        assert c.post(f"{PEERS}/{fed['peer_id']}/suspend", json={}).status_code == 200
    assert pulls() == [403, 403, 403]
    a.cli("peers", "resume", fed["peer_id"])  # the CLI, a process of its own
    assert pulls() == [200, 200, 200]

    old_key, old_pub = a[1].well_known()["key_id"], a[1].well_known()["federation_pubkey"]
    rotated = a.cli("keys", "rotate", "--grace", "1")
    assert rotated["key_id"] != old_key
    assert [n.well_known()["key_id"] for n in a] == [rotated["key_id"]] * 3
    with a[2].client() as c:  # a fact asserted through another replica is signed with the new key
        res = c.post("/v1/facts", json={"entity": "ex:e", "relation": "ex:r", "value": {"type": "string", "v": "x"},
                                        "source": "ex:test", "scope": "public"})
        assert res.status_code == 201, res.text
        fact_id = res.json()["id"]
    page = _get(a[0], "/v1/federation/facts?limit=100", _token(b, fed["a_node_id"], "/v1/federation/facts?limit=100"))
    (entry,) = [e for e in page.json()["facts"] if e["fact"]["id"] == fact_id]
    parsed = origin.entry_from_wire(entry)
    new_key = public_key_from_b64(rotated_pub := a[0].well_known()["federation_pubkey"])
    assert rotated_pub != old_pub
    assert origin.verify_fact_origin(new_key, parsed.fact, parsed.origin, entry["origin_sig"])

    with a[2].client() as c:
        assert c.post(f"{PEERS}/{fed['peer_id']}/revoke", json={}).status_code == 200
    assert pulls() == [403, 403, 403]


def test_c_audit_chain_stays_valid_under_concurrent_writes_from_every_replica(replicas, start_node):
    a, b = replicas(), start_node("b")
    fed = _federate(a, b)
    stop = time.monotonic() + 6

    def load(i: int) -> int:
        node, done = a[i % 3], 0
        with node.client() as c:
            while time.monotonic() < stop:
                kind = done % 4
                if kind == 0:
                    c.get(PULL, headers={"Authorization": "Bearer not.a.token"})  # a rejection, audited
                elif kind == 1:
                    c.post("/v1/facts", json={"entity": f"ex:e{i}-{done}", "relation": "ex:r", "source": "ex:s",
                                              "value": {"type": "string", "v": str(done)}, "scope": "public"})
                elif kind == 2:
                    c.post(f"{PEERS}/{fed['peer_id']}/suspend", json={"reason": f"load {i}"})
                else:
                    c.post(f"{PEERS}/{fed['peer_id']}/resume", json={})
                done += 1
        return done

    with ThreadPoolExecutor(9) as pool:
        assert sum(pool.map(load, range(9))) > 50
    res = run_cli("audit", "verify", "--database-url", a.url)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "intact" in res.stdout
    with psycopg.connect(a.url) as conn:
        rows, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT prev_hash) FROM audit_log").fetchone()
    assert rows > 20 and rows == distinct  # no fork: every row links to another predecessor


def _lease_holder(url: str, peer_id: str) -> int | None:
    """The pid of the replica holding the pull lease of ``peer_id`` (its application_name)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND ((l.classid::bigint << 32) | l.objid::bigint) = "
            "(hashtextextended(%s, 0) & x'ffffffffffffffff'::bigint)",
            (f"stigmem-pull:{peer_id}",)).fetchone()
    if row is None:
        return None
    return int(row[0].split(":")[1])  # stigmem-node:<pid>:leases


def test_d_one_replica_pulls_a_peer_and_another_takes_over_when_it_dies(replicas):
    peer = FakePeer(name="origin").up()
    try:
        total = 60
        peer.add(*[peer.make(f"ex:fact{i}") for i in range(total)])
        peer.set("slow", hang_s=0.25)  # every page takes a quarter of a second ...
        peer.page_cap = 5  # ... and holds 5 facts: a pull takes 12 pages, 3 seconds
        a = replicas(args=("--pull-interval", "1"))
        rec = peer.register_on(a[0])
        deadline = time.monotonic() + 90
        holder = None
        while holder is None:
            assert time.monotonic() < deadline, "no replica took the pull lease"
            holder = _lease_holder(a.url, rec["peer_id"])
            time.sleep(0.05)
        time.sleep(0.8)  # a few pages in
        victim = next(n for n in a if n.proc.pid == holder)
        os.kill(victim.proc.pid, signal.SIGKILL)
        with psycopg.connect(a.url) as conn:
            at_kill = conn.execute("SELECT COUNT(*) FROM facts WHERE received_from IS NOT NULL").fetchone()[0]
        assert 0 < at_kill < total, f"{at_kill} of {total} facts were stored when the puller died"
        victim.proc.wait(10)
        deadline = time.monotonic() + 90
        while True:
            with psycopg.connect(a.url) as conn:
                stored = conn.execute("SELECT COUNT(*) FROM facts WHERE received_from IS NOT NULL").fetchone()[0]
            if stored == total:
                break
            assert time.monotonic() < deadline, f"only {stored} of {total} facts after the takeover"
            time.sleep(0.2)
        signed = [h.claims for h in peer.hits if h.claims]
        assert len({c["nonce"] for c in signed}) == len(signed)  # every page request had a token of its own
        assert len(peer.hits) >= total // 5
        assert peer.max_in_flight == 1, "two replicas pulled the peer at the same time"
        with psycopg.connect(a.url) as conn:
            ingested, distinct = conn.execute(
                "SELECT (SELECT facts_ingested FROM replication_state WHERE peer_id = %s), "
                "(SELECT COUNT(DISTINCT id) FROM facts WHERE received_from IS NOT NULL)", (rec["peer_id"],)).fetchone()
        assert (ingested, distinct) == (total, total)
    finally:
        peer.down()


def test_e_failure_limits_and_audit_budgets_are_per_replica(replicas):
    a = replicas()
    bad = {"Authorization": "Bearer stgm_000000000000_" + "x" * 43}
    first_429 = []
    for node in a:
        with httpx.Client(base_url=node.url, timeout=10) as c:
            codes = [c.get(PEERS, headers=bad).status_code for _ in range(15)]
        first_429.append(codes.index(429))
    assert first_429 == [10, 10, 10]  # each replica's own limit: N x 10 failures in all
    for node in a:  # 100 forged peer tokens from one address, spread over the replicas
        with httpx.Client(base_url=node.url, timeout=10) as c:
            for _ in range(34):
                c.get(PULL, headers={"Authorization": "Bearer a.b.c"})
    with psycopg.connect(a.url) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM audit_log WHERE event_type = 'token_rejected'").fetchone()[0]
    assert 20 <= rows <= 3 * 20
