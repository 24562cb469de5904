"""A large initial sync survives ``kill -9`` anywhere: it resumes from the last committed page.

The origin is a fake peer (tests/fakepeer.py, a real HTTP server with its own Ed25519 key)
serving 3,000 correctly signed facts in pages of at most 50, each page after a short delay,
so that a kill lands in the middle of the pull: while a page is fetched, checked or stored.
The puller is a real node's database pulled by real ``stigmem-node pull`` processes (no
server runs on it meanwhile), killed with SIGKILL after varying numbers of pages of their
own, then restarted.  The fake peer's cursor is the number of facts served before it, so
the stored cursor names exactly the facts that must be stored: the first ``cursor`` of them.
(bench/initial_sync.py is the same at a million facts, against a real origin node.)
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import pytest

from tests.engines import connect, provide_pepper
from tests.fakepeer import FakePeer
from tests.nodes import ServedNode, node_env

FACTS = 3_000
PAGE = 50


def _pull_cmd(n: ServedNode) -> list[str]:
    return [sys.executable, "-m", "stigmem_node", "pull", "--db", str(n.db), "--json",
            *(["--database-url", n.database_url] if n.database_url else [])]


def _state(conn, peer_id: str) -> tuple[int, str | None]:
    rows = conn.execute("SELECT facts_ingested, cursor FROM replication_state WHERE peer_id = ?", (peer_id,))
    conn.commit()  # the next read sees what committed since
    return (rows[0][0], rows[0][1]) if rows else (0, None)


def _stored_ids(conn, node_id: str) -> list[str]:
    rows = conn.execute("SELECT id FROM facts WHERE received_from = ?", (node_id,))
    conn.commit()
    return [r[0] for r in rows]


@pytest.mark.slow
def test_sigkill_during_an_initial_sync_resumes_from_the_last_committed_page(start_node, seed):
    rng = random.Random(seed)
    peer = FakePeer(scopes=("company", "public")).up()
    try:
        peer.add(*(peer.make(f"stigmem://sync/item/{i}", ("company", "public")[i % 2], f"fact {i}")
                   for i in range(FACTS)))
        peer.page_cap = PAGE
        peer.set("slow", hang_s=0.02)  # every page a little late: kills land mid-pull
        ids = [e["fact"]["id"] for e in peer.entries]
        p = start_node("p")
        peer_id = peer.register_on(p)["peer_id"]
        p.stop()  # the pulls run against its database, as cron jobs would
        if p.database_url:
            provide_pepper(p.db)
        watch = connect(p.target)

        # Kill points: one while the process starts, then after 1 to 12 pages of its own, each
        # a random moment into the next page (fetch, check or commit).
        plan: list[int | None] = [None] + [rng.randint(1, 12) for _ in range(6)]
        kills: list[tuple[int | None, int, str | None]] = []
        for pages in plan:
            before, before_cursor = _state(watch, peer_id)
            first_hit = len(peer.hits)
            proc = subprocess.Popen(_pull_cmd(p), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    env=node_env())
            try:
                if pages is None:
                    time.sleep(rng.uniform(0.05, 0.4))
                else:
                    while _state(watch, peer_id)[0] < before + pages * PAGE and proc.poll() is None:
                        time.sleep(0.002)
                    time.sleep(rng.uniform(0, 0.05))
                assert proc.poll() is None, "the pull ended before its kill: make the peer slower"
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
            ingested, cursor = _state(watch, peer_id)
            kills.append((pages, ingested, cursor))
            # The cursor is the last committed page's, and exactly its facts and all before are stored.
            assert cursor == (str(ingested) if ingested else None), (seed, kills)
            assert ingested % PAGE == 0 and ingested >= before, (seed, kills)
            stored = _stored_ids(watch, peer.node_id)
            assert len(stored) == len(set(stored)) == ingested, (seed, kills)
            assert set(stored) == set(ids[:ingested]), (seed, kills)
            # This run resumed where the one before it had committed.
            hits = peer.hits[first_hit:]
            if hits:
                assert hits[0].query.get("cursor") == before_cursor, (seed, kills, hits[0].query)
        mid = [k for k in kills if k[0] is not None]
        assert all(k[1] < FACTS for k in mid), (seed, kills)  # every kill was mid-pull
        assert len({k[1] for k in mid}) >= 4, (seed, kills)  # at varying page counts

        peer.set("ok")
        done = subprocess.run(_pull_cmd(p), capture_output=True, text=True, env=node_env(), timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        ingested, cursor = _state(watch, peer_id)
        stored = _stored_ids(watch, peer.node_id)
        assert len(stored) == len(set(stored)) == ingested == FACTS, (seed, kills, ingested)
        assert set(stored) == set(ids)
        assert cursor == str(FACTS)
        ((rejected,),) = watch.execute("SELECT facts_rejected FROM replication_state WHERE peer_id = ?", (peer_id,))
        assert rejected == 0
        watch.close()
        print(f"\nseed {seed}; kills (pages of this run, facts committed, cursor): {kills}")
    finally:
        peer.down()
