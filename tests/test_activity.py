"""Replication activity as operators watch it (stigmem_node.activity, store.activity).

A publisher notes each pull it serves and writes the notes in the background: the peer's
last pull, how far its cursor reached, the skew of its token, and facts out per minute.  A
subscriber counts facts in per minute in the page's transaction, and its consecutive
failures per peer.  Both engines.
"""

from __future__ import annotations

import pytest

from stigmem_node.activity import Activity, minute_of
from stigmem_node.store import Store
from stigmem_node.store.activity import PeerPull
from tests.test_replication import fact, federate, node_id, post_facts, pull, q, wait_for


def test_a_pull_served_is_recorded_with_its_cursor_skew_and_facts_out(start_node):
    a, b = start_node("a"), start_node("b")
    federate(a, b)
    post_facts(a, [fact(f"urn:act:{i}", "public") for i in range(3)])
    code, _ = pull(b)
    assert code == 0
    b_at_a = q(a.target, "SELECT id FROM peers WHERE node_id = ?", (node_id(b),))[0][0]
    # Written by the publisher's background within a couple of seconds.
    wait_for(lambda: q(a.target, "SELECT facts_served FROM peer_pulls WHERE peer_id = ?", (b_at_a,)) == [(3,)],
             timeout=30, what="the pull noted at A")
    (cursor_seq, skew, last_pull_at), = q(
        a.target, "SELECT cursor_seq, token_skew_ms, last_pull_at FROM peer_pulls WHERE peer_id = ?", (b_at_a,))
    head = q(a.target, "SELECT MAX(seq) FROM facts")[0][0]
    assert cursor_seq == head
    assert skew is not None and abs(skew) < 600_000
    assert last_pull_at.endswith("Z")
    assert q(a.target, "SELECT SUM(facts) FROM fact_traffic WHERE direction = 'out'") == [(3,)]
    # B counted what it received, in the page's own transaction.
    assert q(b.target, "SELECT SUM(facts) FROM fact_traffic WHERE direction = 'in'") == [(3,)]
    # Another pull with nothing new: the cursor stays, the pull time moves, nothing more out.
    pull(b)
    wait_for(lambda: q(a.target, "SELECT last_pull_at FROM peer_pulls")[0][0] > last_pull_at, timeout=30,
             what="the second pull noted")
    assert q(a.target, "SELECT cursor_seq, facts_served FROM peer_pulls") == [(head, 3)]


def test_consecutive_failures_count_up_and_reset_on_success(start_node):
    a, b = start_node("a"), start_node("b")
    federate(a, b)
    a_at_b = q(b.target, "SELECT id FROM peers WHERE node_id = ?", (node_id(a),))[0][0]
    with a.client() as c:  # A suspends B: B's pulls fail
        b_at_a = q(a.target, "SELECT id FROM peers WHERE node_id = ?", (node_id(b),))[0][0]
        assert c.post(f"/v1/federation/peers/{b_at_a}/suspend", json={}).status_code == 200
        pull(b)
        pull(b)
        assert q(b.target, "SELECT consecutive_failures FROM replication_state WHERE peer_id = ?",
                 (a_at_b,)) == [(2,)]
        assert c.post(f"/v1/federation/peers/{b_at_a}/resume", json={}).status_code == 200
    assert pull(b)[0] == 0
    assert q(b.target, "SELECT consecutive_failures, last_error FROM replication_state WHERE peer_id = ?",
             (a_at_b,)) == [(0, None)]


def _store(tmp_path, engine) -> Store:
    return Store(engine.url("act") or tmp_path / "act.db")


def test_notes_are_summed_until_flushed_and_kept_when_the_write_fails(tmp_path, engine):
    store = _store(tmp_path, engine)
    try:
        now = [1_800_000_000_000]
        act = Activity(lambda: now[0], lambda: "2027-01-15T08:00:00Z")
        with store.transaction():
            store.db.execute("INSERT INTO peers (id, node_id, node_url, federation_pubkey, allowed_scopes,"
                             " declaration, signed_at, status, created_at, updated_at) VALUES"
                             " ('p1', 'stigmem:node:x', 'http://x', 'k', '[]', '{}', 't', 'active', 't', 't')")
        act.served("p1", 5, 5, 12)
        now[0] += 60_000
        act.served("p1", 7, 2, -3)
        act.served("gone", 1, 1, 0)  # a peer removed meanwhile is skipped, not an error

        def failing():
            raise RuntimeError("write refused")

        with pytest.raises(RuntimeError):
            act.flush(store.activity, failing)
        assert act.pending()
        act.served("p1", 8, 1, 4)  # noted while the failed write was being retried
        assert act.flush(store.activity, store.transaction) == 2
        assert not act.pending()
        assert store.activity.pulls() == {"p1": PeerPull("p1", "2027-01-15T08:00:00Z", 8, 8, 4)}
        first = minute_of(1_800_000_000_000)
        assert store.activity.traffic(first) == [(first, "out", 5), (first + 1, "out", 4)]
        assert store.activity.prune_traffic(first + 1) == 1
        assert store.activity.traffic(0) == [(first + 1, "out", 4)]
    finally:
        store.close()
