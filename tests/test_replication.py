"""The subscriber end to end: real nodes, real HTTP on 127.0.0.1, real keys, no mocks.

Pullers and origins are nodes served in process (``tests/nodes.py``), or ``stigmem-node
serve`` subprocesses where a test signals the server; passes run through the real CLI
(``stigmem-node pull``, in process, or as processes that are killed or race each other on
one database) or the in-server schedule (``serve --pull-interval``).  A misbehaving peer is ``tests/fakepeer.py``: a real HTTP
server with its own Ed25519 identity whose pages are built with ``stigmem_node.facts``.
Databases are read back with SQL (``tests.engines.sql``), on either engine.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stigmem_node.errors import OutboundError
from stigmem_node.outbound import check_url
from stigmem_node.replication.subscriber import FIRST_PAGE_LIMIT
from tests.engines import Connection, connect, sql, url_kw
from tests.fakepeer import Behaviour, FakePeer
from tests.nodes import RunningNode, node_env

SCOPES = ("local", "team", "company", "public")
SHARED = ("company", "public")
FAST = {"STIGMEM_PULL_TIMEOUT_S": "1", "STIGMEM_PULL_ATTEMPTS": "2", "STIGMEM_PULL_BACKOFF_S": "0.05"}
PULL_KEYS = {"ok", "peers_ok", "peers_failed", "new", "duplicates", "rejected", "duration_s", "peers", "tombstones",
             "erased", "tombstones_refused"}
PEER_RESULT_KEYS = {"peer_id", "node_id", "ok", "pages", "new", "duplicates", "rejected", "error", "error_code",
                    "note", "duration_s", "tombstones", "erased", "tombstones_refused"}
REPLICATION_KEYS = {"cursor", "last_attempt_at", "last_success_at", "last_error", "facts_ingested", "facts_rejected"}


# -- helpers ----------------------------------------------------------------------------
def node_id(n: RunningNode) -> str:
    return n.well_known()["node_id"]


def register(puller: RunningNode, origin: RunningNode, scopes: str | None = None) -> dict:
    """``puller``'s operator registers ``origin`` from its published declaration and approves it."""
    wk = origin.well_known()
    with puller.client() as c:
        res = c.post("/v1/federation/peers" + (f"?scopes={scopes}" if scopes else ""), json=wk["declaration"])
        assert res.status_code == 201 and res.json()["status"] == "pending_approval", res.text
        ok = c.post(f"/v1/federation/peers/{res.json()['peer_id']}/approve",
                    json={"pubkey_fingerprint": wk["pubkey_fingerprint"]})
        assert ok.status_code == 200 and ok.json()["status"] == "active", ok.text
        return ok.json()


def federate(a: RunningNode, b: RunningNode) -> None:
    register(a, b)
    register(b, a)


def fact(entity: str, scope: str, v: Any = None, vtype: str = "string", **extra: Any) -> dict:
    return {"entity": entity, "relation": "test:rel", "value": {"type": vtype, "v": entity if v is None else v},
            "source": "test_replication", "scope": scope, **extra}


def post_facts(n: RunningNode, facts: list[dict], client: httpx.Client | None = None) -> list[dict]:
    own = client is None
    c = client or n.client()
    try:
        res = c.post("/v1/facts", json={"facts": facts})
        assert res.status_code in (200, 201), res.text
        return res.json()["facts"]
    finally:
        if own:
            c.close()


def q(db: Path | str, query: str, params: tuple = ()) -> list[tuple]:
    """Rows of the database ``db`` (a node's ``target``: its SQLite file or PostgreSQL URL)."""
    return sql(db, query, params)


def received(db: Path | str, origin_id: str | None = None) -> list[tuple]:
    """(id, origin_node_id, received_from, scope) of the facts a node received from peers."""
    sql = "SELECT id, origin_node_id, received_from, scope FROM facts WHERE received_from IS NOT NULL"
    return q(db, sql + " AND origin_node_id = ?", (origin_id,)) if origin_id else q(db, sql)


def own_shared_ids(db: Path | str) -> set[str]:
    rows = q(db, "SELECT id FROM facts WHERE received_from IS NULL AND scope IN ('company', 'public')")
    return {r[0] for r in rows}


def pull(n: RunningNode, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    res = n.cli("pull", "--json", *args, env=env)
    assert "Traceback" not in res.stderr, res.stderr
    try:
        return res.returncode, json.loads(res.stdout)
    except ValueError:
        raise AssertionError(f"pull did not print JSON (exit {res.returncode}): {res.stdout!r} {res.stderr!r}")


def by_node(summary: dict) -> dict[str, dict]:
    return {p["node_id"]: p for p in summary["peers"]}


def peers_json(n: RunningNode) -> dict[str, dict]:
    return {p["node_id"]: p for p in n.cli_json("peers", "list")}


def audit(n: RunningNode, event_type: str) -> list[dict]:
    with n.client() as c:
        res = c.get("/v1/federation/audit", params={"limit": 500, "event_type": event_type})
    assert res.status_code == 200, res.text
    return res.json()["entries"]


def wait_for(pred, timeout: float, interval: float = 0.05, what: str = "condition") -> float:
    """Seconds until ``pred()`` holds; ``timeout`` is a failsafe against waiting for ever."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def fake_peer():
    started: list[FakePeer] = []

    def make(**kw: Any) -> FakePeer:
        peer = FakePeer(**kw).up()
        started.append(peer)
        return peer

    yield make
    for peer in started:
        peer.down()


# -- 1. a triangle of real nodes --------------------------------------------------------
def test_triangle_every_shared_fact_arrives_once_from_its_origin_inv5_no_relaying(start_node):
    nodes = [start_node(name) for name in ("a", "b", "c")]
    ids = {n.name: node_id(n) for n in nodes}
    for x in nodes:
        for y in nodes:
            if x is not y:
                register(x, y)

    written: dict[str, list[dict]] = {}
    for n in nodes:
        batch = []
        for scope in SCOPES:
            batch += [fact(f"{n.name}:{scope}:s", scope), fact(f"{n.name}:{scope}:i", scope, 42, "number"),
                      fact(f"{n.name}:{scope}:f", scope, 42.0, "number"), fact(f"{n.name}:{scope}:b", scope, True,
                                                                                "boolean")]
        written[n.name] = post_facts(n, batch)

    # B first: when A and C pull B afterwards, B holds A's and C's facts and must not relay them.
    for n in (nodes[1], nodes[0], nodes[2]):
        rc, summary = pull(n)
        assert rc == 0 and summary["ok"], summary
        assert summary["new"] == 2 * 2 * 4 and summary["rejected"] == 0, summary
        assert {p["node_id"] for p in summary["peers"]} == {ids[m.name] for m in nodes if m is not n}

    for n in nodes:
        rows = received(n.target)
        assert len(rows) == len({r[0] for r in rows}) == 16, rows
        expected = {f["id"] for m in nodes if m is not n for f in written[m.name] if f["scope"] in SHARED}
        assert {r[0] for r in rows} == expected
        assert all(r[1] == r[2] for r in rows), "a fact arrived from a node that is not its origin (relayed)"
        assert {r[3] for r in rows} == set(SHARED), "a local or team fact left its node"
        assert not audit(n, "fact_rejected")
        # Values are stored as the origin wrote them (an integer stays an integer).
        with n.client() as c:
            for m in nodes:
                if m is n:
                    continue
                for f in written[m.name]:
                    if f["scope"] in SHARED:
                        got = c.get(f"/v1/facts/{f['id']}").json()
                        assert got["value"] == f["value"] and got["cid"] == f["cid"], (got, f)
                        assert type(got["value"]["v"]) is type(f["value"]["v"])
                        assert got["received_from"] == got["origin_node_id"] == ids[m.name]

    # A second round moves nothing and counts nothing twice.
    for n in nodes:
        rc, summary = pull(n)
        assert rc == 0 and summary["new"] == summary["duplicates"] == summary["rejected"] == 0, summary
        for p in peers_json(n).values():
            assert p["replication"]["facts_ingested"] == 8 and p["replication"]["facts_rejected"] == 0
        assert len(received(n.target)) == 16


# -- 2. invariant 6: each bad fact is skipped and audited, the good ones arrive -----------
def _iso_days(days: float) -> str:
    from datetime import datetime, timedelta

    from stigmem_node.clock import iso

    return iso(datetime.now(UTC) + timedelta(days=days))


def test_inv6_inv10_tampered_facts_are_rejected_with_their_reason_and_the_good_ones_arrive(start_node, fake_peer):
    p = start_node("p")
    f = fake_peer(scopes=("company", "public", "team"))
    rec = f.register_on(p, scopes="company,public")  # F declares team too; P's operator does not grant it
    assert rec["allowed_scopes"] == ["company", "public"]
    p_id = node_id(p)

    g1 = f.make("good-1", "public")
    g2 = f.make("good-2", "company", valid_until=_iso_days(1))
    g3 = f.make("good-3", "public", 42, value_type="number")
    f.add(g1, g2, g3)
    rc, summary = pull(p)
    assert rc == 0 and summary["new"] == 3, summary

    bad: dict[str, tuple[dict, str]] = {}

    def tamper(name: str, entry: dict, reason: str) -> dict:
        bad[name] = (entry, reason)
        return entry

    changed = f.make("changed-value", "public")
    changed["fact"]["value"]["v"] = "something else"  # the CID no longer matches
    bad_cid = f.make("bad-cid", "public")
    bad_cid["fact"]["cid"] = "sha256:not-a-cid"
    forged = f.make("forged", "public", key=Ed25519PrivateKey.generate())
    flipped = f.make("flipped-sig", "public")
    flipped["origin_sig"] = ("A" if flipped["origin_sig"][0] != "A" else "B") + flipped["origin_sig"][1:]
    team = f.make("team-fact", "team")  # correctly signed, but the scope was not granted
    local = f.make("local-fact", "local")
    undeclared = f.make("undeclared", "public", origin_scopes=("company",))  # the origin did not declare public
    relayed = f.make("relayed", "public", origin_node_id="stigmem:node:someone-else")  # signed by F, claims another
    from_us = f.make("from-us", "public", origin_node_id=p_id)
    collision = f.make("collision", "public", fact_id=g1["fact"]["id"])  # stored id, another CID
    extension = json.loads(json.dumps(g2))
    extension["fact"]["valid_until"] = _iso_days(30)
    f.resign(extension)  # a valid signature over the longer validity
    missing_origin = {k: v for k, v in f.make("no-origin", "public").items() if k != "origin"}

    tamper("changed", changed, "cid_mismatch")
    tamper("bad_cid", bad_cid, "invalid_fact")
    tamper("forged", forged, "invalid_origin_signature")
    tamper("flipped", flipped, "invalid_origin_signature")
    tamper("team", team, "scope_not_granted")
    tamper("local", local, "scope_not_granted")
    tamper("undeclared", undeclared, "scope_not_granted")
    tamper("relayed", relayed, "origin_not_sender")
    tamper("from_us", from_us, "origin_not_sender")
    tamper("collision", collision, "id_collision")
    tamper("extension", extension, "valid_until_extension")
    tamper("missing_origin", missing_origin, "invalid_fact")
    tamper("garbage", "not an entry", "invalid_fact")  # type: ignore[arg-type]

    goods = [f.make(f"good-{i}", "company" if i % 2 else "public") for i in range(4, 10)]
    page = []
    for i, (entry, _) in enumerate(bad.values()):
        page += [goods[i % len(goods)] if i < len(goods) else None, entry]
    page = [e for e in page if e is not None]
    page += [json.loads(json.dumps(g1)), json.loads(json.dumps(g3))]  # exact re-sends: duplicates, not rejections
    f.add(*page)

    rc, summary = pull(p)
    assert rc == 0, summary  # bad facts never fail the peer
    (res,) = summary["peers"]
    assert res["ok"] and res["new"] == len(goods) and res["rejected"] == len(bad) and res["duplicates"] == 2, res

    stored = {r[0] for r in received(p.target)}
    assert stored == {e["fact"]["id"] for e in [g1, g2, g3, *goods]}
    # The stored facts behind the collision and the extension are unchanged.
    (cid1,) = q(p.target, "SELECT cid FROM facts WHERE id = ?", (g1["fact"]["id"],))[0]
    (vu2,) = q(p.target, "SELECT valid_until FROM facts WHERE id = ?", (g2["fact"]["id"],))[0]
    assert cid1 == g1["fact"]["cid"] and vu2 == g2["fact"]["valid_until"]

    rows = audit(p, "fact_rejected")
    assert sorted(r["reason"] for r in rows) == sorted(reason for _, reason in bad.values()), rows
    for r in rows:
        assert r["peer_id"] == rec["peer_id"] and r["actor"] == f"peer:{f.node_id}" and r["ts"]
    by_id = {r["detail"]["fact_id"]: r["reason"] for r in rows if r["detail"].get("fact_id")}
    for name, (entry, reason) in bad.items():
        if isinstance(entry, dict) and name not in ("bad_cid",):
            assert by_id.get(entry["fact"]["id"]) == reason, (name, by_id)

    rep = peers_json(p)[f.node_id]["replication"]
    assert rep["facts_rejected"] == len(bad) and rep["facts_ingested"] == 3 + len(goods)
    assert rep["last_error"] is None and rep["cursor"] == str(len(f.entries))


def test_inv6_an_id_reused_within_one_page_with_another_cid_is_a_collision(start_node, fake_peer):
    p = start_node("p")
    f = fake_peer()
    f.register_on(p)
    first = f.make("first", "public")
    twin = f.make("twin", "public", fact_id=first["fact"]["id"])  # same id, other content, validly signed
    longer = f.make("expiring", "public", valid_until=_iso_days(1))
    longer_twin = json.loads(json.dumps(longer))
    longer_twin["fact"]["valid_until"] = _iso_days(9)
    f.resign(longer_twin)
    f.add(first, twin, longer, longer_twin)
    rc, summary = pull(p)
    assert rc == 0
    assert summary["new"] == 2 and summary["rejected"] == 2, summary
    assert sorted(r["reason"] for r in audit(p, "fact_rejected")) == ["id_collision", "valid_until_extension"]
    assert q(p.target, "SELECT cid FROM facts WHERE id = ?", (first["fact"]["id"],)) == [(first["fact"]["cid"],)]


def test_inv6_randomly_mutated_entries_never_crash_the_pass_and_only_verified_facts_are_stored(start_node,
                                                                                                 fake_peer, seed):
    from stigmem_node import origin as om
    from stigmem_node.keys import public_key_from_b64

    rng = random.Random(seed)
    p = start_node("p")
    f = fake_peer()
    f.register_on(p)
    pool = [None, 0, -1, 1.5, 10**30, "", " ", "x", [], {}, True, "\u0000", "\ud7ff", "9" * 300, {"a": 1}, ["public"],
            "sha256:" + "0" * 64, "2026-01-01T00:00:00Z", "public", "team", f.node_id, "A" * 86]
    entries = []
    for i in range(80):
        e = f.make(f"fuzz-{i}", SHARED[i % 2], valid_until=_iso_days(1) if i % 3 == 0 else None)
        for _ in range(rng.randint(1, 2)):
            where = rng.choice(["top", "fact", "fact", "value", "origin"])
            obj = e
            for step in {"top": [], "fact": ["fact"], "value": ["fact", "value"], "origin": ["origin"]}[where]:
                obj = obj.get(step) if isinstance(obj, dict) else None
            if not isinstance(obj, dict):
                continue
            key = rng.choice(sorted(obj) + ["extra"])
            if rng.random() < 0.2:
                obj.pop(key, None)
            else:
                obj[key] = rng.choice(pool)
        entries.append(e)
    f.add(*entries)
    rc, s = pull(p)
    assert rc == 0 and s["new"] + s["duplicates"] + s["rejected"] == len(entries), (seed, s)
    # Every rejected fact is in the trail: one row each for the first 20 of a page, the rest
    # named in one summary row (so a peer cannot flood the trail).
    rows = audit(p, "fact_rejected")
    summaries = audit(p, "facts_rejected_summary")
    named = len(rows) + sum(r["detail"]["count"] for r in summaries)
    assert s["rejected"] > 0 and len(rows) <= 20 * len(summaries or [None]) and named == s["rejected"], seed
    if summaries:
        assert all(len(r["detail"]["facts"]) == r["detail"]["count"] for r in summaries)
    # A rejection is a verdict on the fact, never a crash of the checks.
    reasons = [r["reason"] for r in rows] + [code for r in summaries for _, code in r["detail"]["facts"]]
    assert "internal_validation_error" not in reasons, seed

    key = public_key_from_b64(f.public_key)
    for (entry_json, received_from) in q(p.target, "SELECT entry, received_from FROM facts"):
        got = om.entry_from_wire(json.loads(entry_json))  # the CID recomputes
        assert received_from == got.origin.node_id == f.node_id, seed
        assert got.fact.scope in SHARED and got.fact.scope in got.origin.allowed_scopes, seed
        assert om.verify_fact_origin([key], got.fact, got.origin, got.origin_sig), seed


# -- 3. one bad peer never stops the others; it is caught up once healthy ---------------
def _distinct_nonces(hits) -> bool:
    nonces = [h.claims["nonce"] for h in hits if h.claims]
    return len(nonces) == len(set(nonces)) == len(hits)


@pytest.mark.parametrize("failure, code, attempts", [
    ("down", "peer_unreachable", 2),
    ("hang", "peer_timeout", 2),
    ("500", "peer_http_500", 2),
    ("429", "peer_http_429", 2),
])
def test_a_failing_peer_does_not_stop_the_others_and_is_caught_up_next_pass(start_node, fake_peer, failure, code,
                                                                             attempts):
    p, r = start_node("p"), start_node("r")
    federate(p, r)
    f = fake_peer()
    f.register_on(p)
    r_id = node_id(r)

    post_facts(r, [fact(f"r-{i}", SHARED[i % 2]) for i in range(5)])
    f.add(*[f.make(f"f-{i}", "public") for i in range(3)])
    rc, summary = pull(p, env=FAST)
    assert rc == 0 and by_node(summary)[f.node_id]["new"] == 3

    post_facts(r, [fact(f"r2-{i}", SHARED[i % 2]) for i in range(4)])
    f.add(*[f.make(f"f2-{i}", "company") for i in range(2)])
    before = len(f.hits)
    if failure == "down":
        f.down()
    elif failure == "hang":
        f.set("hang", hang_s=5)
    else:
        f.set("status", status=int(failure), headers={"Retry-After": "1"} if failure == "429" else {})
    rc, summary = pull(p, env=FAST)
    assert rc == 1 and not summary["ok"] and summary["peers_ok"] == 1 and summary["peers_failed"] == 1, summary
    got = by_node(summary)
    assert got[r_id]["ok"] and got[r_id]["new"] == 4, got  # the healthy peer's facts arrived in the same pass
    assert len(received(p.target, r_id)) == 9
    bad = got[f.node_id]
    assert not bad["ok"] and bad["error_code"] == code and bad["error"], bad
    assert bad["new"] == 0 and len(received(p.target, f.node_id)) == 3
    hits = f.hits[before:]
    if failure != "down":
        assert len(hits) == attempts, hits  # retried, each time with a fresh single-use token
        assert _distinct_nonces(hits)
    if failure == "429":
        assert hits[1].t - hits[0].t >= 0.9, "Retry-After: 1 was not honoured"
    rep = peers_json(p)[f.node_id]["replication"]
    assert rep["last_error"].startswith(code) and rep["cursor"] == "3"

    if failure == "down":
        f.up()
    f.set("ok")
    rc, summary = pull(p, env=FAST)
    assert rc == 0 and summary["ok"], summary
    assert by_node(summary)[f.node_id]["new"] == 2 and by_node(summary)[r_id]["new"] == 0
    assert len(received(p.target, f.node_id)) == 5
    rep = peers_json(p)[f.node_id]["replication"]
    assert rep["last_error"] is None and rep["cursor"] == "5" and rep["facts_ingested"] == 5


def test_a_page_that_cannot_be_fetched_stops_the_pull_after_the_pages_before_it_are_stored(start_node, fake_peer):
    """The next page is fetched while this one is checked: when that fetch fails for good,
    the page already fetched is still stored (with its cursor) before the pull reports the
    error, and the next pass goes on from there, nothing lost, nothing twice."""
    p = start_node("p")
    f = fake_peer()
    f.register_on(p)
    f.add(*[f.make(f"g-{i}", "public") for i in range(1200)])  # a first page of 100, then pages of 500
    f.then(Behaviour("ok"), Behaviour("status", status=400))  # the second page is refused (final)
    rc, summary = pull(p, env=FAST)
    res = by_node(summary)[f.node_id]
    assert rc == 1 and res["error_code"] and res["new"] == FIRST_PAGE_LIMIT, summary
    assert len(received(p.target)) == FIRST_PAGE_LIMIT
    rc, summary = pull(p, env=FAST)
    res = by_node(summary)[f.node_id]
    assert rc == 0 and (res["new"], res["duplicates"]) == (1200 - FIRST_PAGE_LIMIT, 0), summary
    assert len(received(p.target)) == 1200


def test_retry_after_seconds_and_http_date_are_honoured_before_the_next_attempt(start_node, fake_peer):
    from datetime import datetime, timedelta
    from email.utils import format_datetime

    p = start_node("p")
    f = fake_peer()
    f.register_on(p)
    f.add(*[f.make(f"f-{i}", "public") for i in range(3)])
    f.then(Behaviour("status", status=429, headers={"Retry-After": "2"}))
    rc, summary = pull(p, env={**FAST, "STIGMEM_PULL_ATTEMPTS": "3"})
    assert rc == 0 and summary["new"] == 3, summary
    h = f.hits
    assert [x.kind for x in h] == ["status", "ok"]
    assert h[1].t - h[0].t >= 1.9, "Retry-After: 2 was not honoured"
    assert _distinct_nonces(h)

    f.add(f.make("late", "public"))
    date = format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    f.then(Behaviour("status", status=503, headers={"Retry-After": date}), Behaviour("status", status=503))
    n = len(f.hits)
    rc, summary = pull(p, env={**FAST, "STIGMEM_PULL_ATTEMPTS": "3"})
    assert rc == 0 and summary["new"] == 1, summary
    h = f.hits[n:]
    assert [x.kind for x in h] == ["status", "status", "ok"]
    assert h[1].t - h[0].t >= 1.0, "Retry-After as an HTTP-date was not honoured"
    # A 503 without Retry-After backs off by STIGMEM_PULL_BACKOFF_S only, not by the 3 s of the
    # date again: less than the wait the date imposed (at most 3 s).
    assert h[2].t - h[1].t < h[1].t - h[0].t


# -- 4. invariant 7: SIGKILL anywhere during a 10,000-fact pull loses and doubles nothing --
def _pull_cmd(n: RunningNode) -> list[str]:
    return [sys.executable, "-m", "stigmem_node", "pull", "--db", str(n.db), "--json",
            *(["--database-url", n.database_url] if n.database_url else [])]


class Writer(threading.Thread):
    """Writes facts of every scope on a node until stopped (local writes during the pull)."""

    def __init__(self, n: RunningNode, prefix: str, batch: int = 20, pause_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.n, self.prefix, self.batch, self.pause_s = n, prefix, batch, pause_s
        self.stop_event = threading.Event()
        self.written: list[dict] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.n.client() as c:
                i = 0
                while not self.stop_event.is_set():
                    facts = [fact(f"{self.prefix}-{i}-{k}", SCOPES[k % 4]) for k in range(self.batch)]
                    self.written += post_facts(self.n, facts, client=c)
                    i += 1
                    time.sleep(self.pause_s)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def finish(self) -> list[dict]:
        self.stop_event.set()
        self.join(timeout=30)
        assert self.error is None, self.error
        return self.written


def _ingested(conn: Connection, peer_id: str) -> int:
    rows = conn.execute("SELECT facts_ingested FROM replication_state WHERE peer_id = ?", (peer_id,))
    conn.commit()  # the next read sees what committed since
    return rows[0][0] if rows else 0


@pytest.mark.slow
def test_inv7_sigkill_at_random_points_of_a_10000_fact_pull_loses_and_doubles_nothing(start_node, seed):
    rng = random.Random(seed)
    o, p = start_node("o"), start_node("p")
    federate(p, o)
    o_id = node_id(o)
    peer_id = peers_json(p)[o_id]["peer_id"]
    with o.client() as c:
        for b in range(20):
            post_facts(o, [fact(f"bulk-{b}-{i}", SHARED[i % 2]) for i in range(500)], client=c)
        post_facts(o, [fact(f"private-{i}", ("local", "team")[i % 2]) for i in range(100)], client=c)
    assert len(own_shared_ids(o.target)) == 10_000

    watch = connect(p.target)
    writer = Writer(o, "during")
    writer.start()
    kills: list[tuple[str, float, int]] = []  # (how, when after start, facts_ingested at the kill)
    plan = [("time", rng.uniform(0.05, 0.5)), ("time", rng.uniform(0.2, 0.6))]  # startup, first fetches
    plan += [("rows", rng.randint(1, 900)) for _ in range(6)]  # after this many more facts in this run
    started_all = time.monotonic()
    try:
        for how, at in plan:
            proc = subprocess.Popen(_pull_cmd(p), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=node_env())
            t0 = time.monotonic()
            try:
                if how == "time":
                    time.sleep(at)
                else:
                    target = _ingested(watch, peer_id) + at
                    while _ingested(watch, peer_id) < target and proc.poll() is None:
                        time.sleep(0.002)
                    time.sleep(rng.uniform(0, 0.1))  # anywhere in the next page: fetch, verify or commit
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=10)
                    n = _ingested(watch, peer_id)
                    kills.append((how, round(time.monotonic() - t0, 3), n))
                    # Facts and counters commit together: never a row without its count, or the reverse.
                    ((rows,),) = watch.execute("SELECT COUNT(*) FROM facts WHERE received_from = ?", (o_id,))
                    watch.commit()
                    assert rows == n, (seed, kills, rows)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
        # Each "rows" kill hit a live pull after it had committed at least one page of its own.
        mid_pull = [k for k in kills if k[0] == "rows"]
        assert len(kills) >= 5 and len(mid_pull) >= 5, (seed, kills)
        progress = [k[2] for k in kills]
        assert progress == sorted(progress), (seed, kills)  # never went backwards
        rc, summary = pull(p)  # runs to the end while the origin keeps writing
        assert rc == 0 and summary["new"] > 0, (seed, kills, summary)  # the kills were not all at the end
    finally:
        during = writer.finish()
    elapsed = time.monotonic() - started_all
    rc, summary = pull(p)  # a final pass after the last local write
    assert rc == 0 and summary["rejected"] == 0, summary

    expected = own_shared_ids(o.target)
    assert len(expected) == 10_000 + sum(1 for f in during if f["scope"] in SHARED)
    (count, distinct) = q(p.target, "SELECT COUNT(*), COUNT(DISTINCT id) FROM facts WHERE received_from = ?", (o_id,))[0]
    assert count == distinct == len(expected), (seed, count, distinct, len(expected))
    assert {r[0] for r in received(p.target, o_id)} == expected
    assert not q(p.target, "SELECT id FROM facts WHERE scope IN ('local', 'team')")
    rep = peers_json(p)[o_id]["replication"]
    assert rep["facts_ingested"] == count and rep["facts_rejected"] == 0, (seed, rep, count)
    watch.close()
    print(f"\ninv7: seed {seed}; {len(kills)} kills {kills}; {count} facts "
          f"({len(during)} written during the pull) in {elapsed:.1f} s including restarts")


@pytest.mark.slow
def test_uninterrupted_10000_fact_pull_throughput(start_node):
    o, p = start_node("o"), start_node("p")
    federate(p, o)
    with o.client() as c:
        for b in range(20):
            post_facts(o, [fact(f"bulk-{b}-{i}", SHARED[i % 2]) for i in range(500)], client=c)
    t0 = time.monotonic()
    rc, summary = pull(p)
    wall = time.monotonic() - t0
    # A small first page, then full ones.
    assert rc == 0 and summary["new"] == 10_000 and summary["peers"][0]["pages"] == 1 + 9_900 // 500 + 1
    rate = 10_000 / summary["peers"][0]["duration_s"]
    print(f"\n10,000 facts: {rate:.0f} facts/s in the pass, {10_000 / wall:.0f} facts/s including the command's start")


# -- 5. two overlapping passes on one database -------------------------------------------
def test_inv7_two_overlapping_pulls_on_one_database_neither_corrupt_nor_double_count(start_node):
    o, p = start_node("o"), start_node("p")
    federate(p, o)
    o_id = node_id(o)
    previous, notes = 0, []
    with o.client() as c:
        for rnd in range(3):
            for b in range(4 if rnd == 0 else 2):
                post_facts(o, [fact(f"r{rnd}-{b}-{i}", SHARED[i % 2]) for i in range(500)], client=c)
            total = len(own_shared_ids(o.target))
            procs = [subprocess.Popen(_pull_cmd(p), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=node_env()) for _ in range(2)]
            outs = [proc.communicate(timeout=60) for proc in procs]
            for proc, (out, err) in zip(procs, outs):
                assert proc.returncode == 0 and "Traceback" not in err, (out, err)
            summaries = [json.loads(out) for out, _ in outs]
            notes += [s["peers"][0]["note"] for s in summaries if s["peers"][0]["note"]]
            (count, distinct) = q(p.target, "SELECT COUNT(*), COUNT(DISTINCT id) FROM facts WHERE received_from = ?",
                                  (o_id,))[0]
            assert count == distinct == total, (rnd, count, distinct, total)
            assert sum(s["new"] for s in summaries) == count - previous, summaries  # the reports add up too
            previous = count
            rep = peers_json(p)[o_id]["replication"]
            assert rep["facts_ingested"] == count and rep["facts_rejected"] == 0, rep
            assert rep["cursor"] == str(q(o.target, "SELECT MAX(seq) FROM facts")[0][0])
    assert {r[0] for r in received(p.target, o_id)} == own_shared_ids(o.target)
    assert notes, "the two passes never actually overlapped"


# -- 6. the in-server schedule ----------------------------------------------------------------
def test_serve_pull_interval_pulls_by_itself_hanging_peers_delay_no_one_and_sigterm_stops_cleanly(
        start_node, start_process_node, fake_peer):
    # Concurrency 1: more hanging peers than the puller's connection pool (2 x concurrency) must
    # still not hold up the live one.
    env = {"STIGMEM_PULL_TIMEOUT_S": "2", "STIGMEM_PULL_ATTEMPTS": "2", "STIGMEM_PULL_BACKOFF_S": "0.2",
           "STIGMEM_PULL_CONCURRENCY": "1"}
    p = start_process_node("p", env=env, args=("--pull-interval", "0.5"))  # a process: SIGTERM below
    r = start_node("r")
    federate(p, r)
    r_id = node_id(r)
    hanging = [fake_peer(name=f"hang{i}") for i in range(3)]
    for h in hanging:
        h.set("hang", hang_s=30)
        h.register_on(p)
    f = hanging[0]
    f.add(*[f.make(f"f-{i}", "public") for i in range(4)])

    # R's facts arrive by themselves, again and again, while every pull of F hangs until its timeout.
    latencies, hanging_at_arrival = [], []
    with r.client() as c:
        for rnd in range(4):
            written = post_facts(r, [fact(f"sched-{rnd}-{i}", SHARED[i % 2]) for i in range(3)], client=c)
            want = {w["id"] for w in written}
            latencies.append(wait_for(lambda: want <= {x[0] for x in received(p.target, r_id)}, 30, what="R's facts"))
            hanging_at_arrival.append(sum(h.open_hangs for h in hanging))
            assert peers_json(p)[r_id]["replication"]["last_error"] is None
            time.sleep(0.4)
    # R's facts arrived while the pulls of all three hanging peers were open: neither pulling
    # one peer at a time nor one pool of 2 x concurrency connections for all peers could do
    # that; R's facts would wait behind the hanging pulls.
    assert len(hanging) in hanging_at_arrival, (hanging_at_arrival, latencies)
    assert all(h.hits and all(x.kind == "hang" for x in h.hits) for h in hanging)
    wait_for(lambda: (peers_json(p)[f.node_id]["replication"]["last_error"] or "").startswith("peer_timeout"), 30,
             what="F's pull to fail with peer_timeout")
    assert len(received(p.target, f.node_id)) == 0
    assert peers_json(p)[r_id]["replication"]["last_error"] is None

    # F heals: the schedule catches it up without anyone running `pull`.
    f.set("ok")
    wait_for(lambda: len(received(p.target, f.node_id)) == 4, 30, what="F's facts after it healed")
    wait_for(lambda: peers_json(p)[f.node_id]["replication"]["last_error"] is None, 30, what="F's error to clear")

    # SIGTERM while a pull of F is hanging: the server stops cleanly and promptly.
    f.set("hang", hang_s=30)
    n = len(f.hits)
    wait_for(lambda: len(f.hits) > n, 30, what="a pull of F in flight")
    p.proc.send_signal(signal.SIGTERM)
    rc = p.proc.wait(timeout=20)  # the hanging pull (30 s) must not hold the shutdown up
    # A graceful shutdown: the schedule and its hanging pull were cancelled, the lifespan ended.
    # (The exit status itself is checked by test_serve_exits_0_on_sigterm.)
    assert rc in (0, -signal.SIGTERM), (rc, p.log())
    assert "Application shutdown complete" in p.log() and "Traceback" not in p.log(), p.log()
    (count, distinct) = q(p.target, "SELECT COUNT(*), COUNT(DISTINCT id) FROM facts WHERE received_from IS NOT NULL")[0]
    assert count == distinct == 12 + 4


def test_serve_exits_0_on_sigterm_with_the_schedule_running(start_process_node):
    p = start_process_node("p", args=("--pull-interval", "0.5"))
    time.sleep(0.6)
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(timeout=10) == 0


# -- 7. the operator surface: pull --json, exit codes, --peer, peers list, the admin API ---------
def test_pull_json_summary_exit_codes_peer_filter_and_replication_fields_in_cli_and_api(start_node, fake_peer):
    p, r = start_node("p"), start_node("r")
    federate(p, r)
    r_id = node_id(r)
    f = fake_peer()
    f_rec = f.register_on(p)
    post_facts(r, [fact(f"r-{i}", SHARED[i % 2]) for i in range(3)] + [fact("r-local", "local")])
    f.add(*[f.make(f"f-{i}", "company") for i in range(2)])

    # Before any pass: the replication object is there, empty.
    for v in peers_json(p).values():
        assert v["replication"] == {"cursor": None, "last_attempt_at": None, "last_success_at": None,
                                    "last_error": None, "facts_ingested": 0, "facts_rejected": 0}

    rc, s = pull(p, env=FAST)
    assert rc == 0 and set(s) == PULL_KEYS, s
    assert s["ok"] is True and s["peers_ok"] == 2 and s["peers_failed"] == 0 and s["new"] == 5
    assert s["duplicates"] == s["rejected"] == 0 and isinstance(s["duration_s"], float)
    for one in s["peers"]:
        assert set(one) == PEER_RESULT_KEYS and one["ok"] and one["error"] is None and one["error_code"] is None
        assert one["pages"] == 1
    assert by_node(s)[r_id]["new"] == 3 and by_node(s)[f.node_id]["new"] == 2
    assert by_node(s)[f.node_id]["peer_id"] == f_rec["peer_id"]

    cli_view = peers_json(p)
    for v in cli_view.values():
        rep = v["replication"]
        assert set(rep) == REPLICATION_KEYS
        assert rep["last_attempt_at"] and rep["last_success_at"] and rep["last_error"] is None
        assert rep["last_attempt_at"] <= rep["last_success_at"]
    assert cli_view[f.node_id]["replication"]["cursor"] == "2"
    last_shared = q(r.target, "SELECT MAX(seq) FROM facts WHERE scope IN ('company', 'public')")[0][0]
    assert cli_view[r_id]["replication"]["cursor"] == str(last_shared)  # R's seq of the last fact it served
    assert cli_view[r_id]["replication"]["facts_ingested"] == 3 and cli_view[f.node_id]["replication"][
        "facts_ingested"] == 2
    with p.client() as c:
        api = {x["node_id"]: x for x in c.get("/v1/federation/peers").json()["peers"]}
        one = c.get(f"/v1/federation/peers/{f.node_id}").json()
    assert {k: v["replication"] for k, v in api.items()} == {k: v["replication"] for k, v in cli_view.items()}
    assert one["replication"] == cli_view[f.node_id]["replication"]

    # One failing peer: exit 1, the failure named with its code, the other peer fine.
    f.set("status", status=500)
    f.add(f.make("f-late", "public"))
    rc, s = pull(p, env=FAST)
    assert rc == 1 and s["ok"] is False and s["peers_ok"] == 1 and s["peers_failed"] == 1
    bad = by_node(s)[f.node_id]
    assert bad["ok"] is False and bad["error_code"] == "peer_http_500" and "500" in bad["error"]
    rep = peers_json(p)[f.node_id]["replication"]
    assert rep["last_error"].startswith("peer_http_500") and rep["last_attempt_at"] > rep["last_success_at"]
    human = p.cli("pull", env=FAST)  # the human form says the same
    assert human.returncode == 1 and "FAIL" in human.stdout and f.node_id in human.stdout
    assert "1 peers ok, 1 failed" in human.stdout and "Traceback" not in human.stderr

    # --peer pulls only that peer (by node id or peer id) and its exit code is that peer's.
    f_attempt = peers_json(p)[f.node_id]["replication"]["last_attempt_at"]
    post_facts(r, [fact("r-late", "public")])
    rc, s = pull(p, "--peer", r_id, env=FAST)
    assert rc == 0 and [x["node_id"] for x in s["peers"]] == [r_id] and s["new"] == 1
    assert peers_json(p)[f.node_id]["replication"]["last_attempt_at"] == f_attempt
    rc, s = pull(p, "--peer", f_rec["peer_id"], env=FAST)
    assert rc == 1 and [x["node_id"] for x in s["peers"]] == [f.node_id]
    f.set("ok")
    rc, s = pull(p, "--peer", f.node_id, env=FAST)
    assert rc == 0 and s["new"] == 1 and peers_json(p)[f.node_id]["replication"]["last_error"] is None

    # An unknown peer is a refused action (exit 1, one line, no traceback); a suspended one is not pulled.
    res = p.cli("pull", "--peer", "stigmem:node:nobody", env=FAST)
    assert res.returncode == 1 and "peer_not_found" in res.stderr and "Traceback" not in res.stderr
    assert p.cli("peers", "suspend", f.node_id).returncode == 0
    n = len(f.hits)
    rc, s = pull(p, env=FAST)
    assert rc == 0 and [x["node_id"] for x in s["peers"]] == [r_id]
    rc, s = pull(p, "--peer", f.node_id, env=FAST)
    assert rc == 1 and s["peers"][0]["error_code"] == "peer_not_active"
    assert len(f.hits) == n  # never contacted


# -- 8. invariant 13 on the puller: bad pages, redirects, plain http -----------------------
def test_inv13_bad_pages_are_refused_with_stable_codes_and_nothing_moves(start_node, fake_peer):
    p = start_node("p")
    f = fake_peer()
    f_rec = f.register_on(p)
    elsewhere = fake_peer(name="elsewhere")
    f.add(*[f.make(f"f-{i}", "public") for i in range(600)])  # more than one page of 500

    def failing_pull(code: str, attempts: int = 1) -> dict:
        n = len(f.hits)
        rc, s = pull(p, env=FAST)
        (res,) = s["peers"]
        assert rc == 1 and res["error_code"] == code, res
        assert len(f.hits) - n == attempts, f.hits[n:]  # a refusal is final, not retried
        return res

    f.set("raw", body=b"<html>not json</html>")
    failing_pull("invalid_page")
    f.set("raw", body=json.dumps({"v": 1, "facts": [], "cursor": None, "has_more": False}).encode())
    failing_pull("invalid_page")
    f.set("raw", body=json.dumps({"v": 2, "facts": {}, "cursor": "1", "has_more": False}).encode())
    failing_pull("invalid_page")
    f.set("raw", body=json.dumps({"v": 2, "facts": [], "cursor": "x" * 600, "has_more": False}).encode())
    failing_pull("invalid_page")
    f.set("too_many")  # one fact more than asked for
    res = failing_pull("invalid_page")
    assert f"more than the {FIRST_PAGE_LIMIT}" in res["error"]  # the pass's first page is the small one
    f.set("status", status=401)
    res = failing_pull("peer_refused")
    assert "fake_401" in res["error"]  # the peer's own error code is reported
    f.set("redirect", location=elsewhere.url + "/v1/federation/facts")
    failing_pull("peer_refused")
    assert not elsewhere.hits  # no redirect is followed, let alone to another host
    assert not received(p.target) and peers_json(p)[f.node_id]["replication"]["cursor"] is None

    # has_more without moving the cursor: the page is kept, the loop stops with cursor_stuck.
    f.set("stuck")
    res = failing_pull("cursor_stuck", attempts=2)
    first = FIRST_PAGE_LIMIT  # the pass's first page
    assert res["new"] == first and len(received(p.target)) == first
    f.set("ok")
    rc, s = pull(p, env=FAST)
    assert rc == 0 and s["new"] == 600 - first and s["duplicates"] == first  # the stuck page was never committed past
    assert len(received(p.target)) == 600 and peers_json(p)[f.node_id]["replication"]["facts_ingested"] == 600

    # Oversize page: the cap is 64 MiB for the CLI; an in-process subscriber on the same database
    # with a small cap, against the same real peer over real HTTP, refuses it while reading.
    from stigmem_node.config import Settings, validate
    from stigmem_node.node import Node
    from stigmem_node.replication import PullOptions

    f.add(*[f.make(f"big-{i}", "public", "x" * 2000) for i in range(5)])
    node = Node(validate(Settings(db_path=p.db, **url_kw(p.database_url))))
    try:
        # Not even one fact fits: the subscriber halves its limit down to 1, then gives up.
        sub = node.subscriber(PullOptions(attempts=1, timeout_s=2, max_page_bytes=1500))
        result = asyncio.run(sub.run_pass(f.node_id))
        (res,) = result.peers
        assert not res.ok and res.error_code == "page_too_large" and res.new == 0, res
        assert len(received(p.target)) == 600
        # Two facts fit: it asks for fewer facts per page and takes them all.
        sub = node.subscriber(PullOptions(attempts=1, timeout_s=2, max_page_bytes=8192))
        result = asyncio.run(sub.run_pass(f.node_id))
        (res,) = result.peers
        assert res.ok and res.new == 5 and res.pages >= 3, res
    finally:
        node.close()
    assert len(received(p.target)) == 605

    # A peer whose URL is plain http to a non-loopback host is refused before any connection.
    p.sql("UPDATE peers SET node_url = ? WHERE id = ?", ("http://192.0.2.10:8765", f_rec["peer_id"]))
    n = len(f.hits)
    rc, s = pull(p, env=FAST)
    assert rc == 1 and s["peers"][0]["error_code"] == "insecure_peer_url" and len(f.hits) == n


def test_inv13_a_page_dripped_byte_by_byte_is_cut_off_at_the_timeout(start_node, fake_peer):
    p = start_node("p")
    f = fake_peer()
    f.register_on(p)
    f.add(*[f.make(f"f-{i}", "public") for i in range(3)])
    f.set("drip", hang_s=6, interval_s=0.25)  # each read is quick; the page takes 6 s
    # Each read is quick, so only a deadline on the whole request (STIGMEM_PULL_TIMEOUT_S=1)
    # makes this a timeout; a per-read timeout would let the 6 s page complete.
    rc, s = pull(p, env={**FAST, "STIGMEM_PULL_ATTEMPTS": "1"})
    assert rc == 1 and s["peers"][0]["error_code"] == "peer_timeout", s
    f.set("ok")
    rc, s = pull(p, env=FAST)
    assert rc == 0 and s["new"] == 3


@pytest.mark.parametrize("url, allow, code", [
    ("http://127.0.0.1:8765", False, None),
    ("http://127.8.9.10", False, None),
    ("http://localhost:1", False, None),
    ("http://[::1]:8765", False, None),
    ("https://node.example.com", False, None),
    ("http://node.example.com", False, "insecure_peer_url"),
    ("http://10.0.0.1:8765", False, "insecure_peer_url"),
    ("http://[2001:db8::1]", False, "insecure_peer_url"),
    ("http://127.0.0.1.example.com", False, "insecure_peer_url"),
    ("http://10.0.0.1:8765", True, None),
    ("ftp://127.0.0.1/x", False, "invalid_peer_url"),
    ("http://", False, "invalid_peer_url"),
    ("127.0.0.1:8765", False, "invalid_peer_url"),
])
def test_inv13_plain_http_only_to_loopback_unless_allowed(url, allow, code):
    if code is None:
        check_url(url, allow_insecure_http=allow)
    else:
        with pytest.raises(OutboundError) as exc:
            check_url(url, allow_insecure_http=allow)
        assert exc.value.code == code
