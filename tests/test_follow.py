"""Following peers: ``serve --pull-interval`` keeps one long-poll open per active peer
(``Scheduler`` with ``wait_s``), so a fact committed on A reaches B without waiting for B's
next interval.  A peer that does not hold requests (a reference node ignores ``wait``) is
pulled by the interval instead, never asked again and again.  Both engines.
"""

from __future__ import annotations

import time

import pytest

from tests.fakepeer import FakePeer
from tests.test_replication import fact, federate, node_id, post_facts, q, wait_for

pytestmark = pytest.mark.slow

HOUR = "3600"


def received_ids(n) -> set[str]:
    return {r[0] for r in q(n.target, "SELECT id FROM facts WHERE received_from IS NOT NULL")}


def test_a_follower_gets_each_new_fact_through_its_long_poll_not_its_interval(start_node):
    a = start_node("a")
    # B pulls once at start, then only every hour: each later fact can only come by the long-poll.
    b = start_node("b", args=("--pull-interval", HOUR, "--pull-wait", "25"))
    federate(a, b)
    wait_for(lambda: a.node.new_facts.waiting == 1, 60, what="B's long-poll to wait at A")
    for i in range(3):
        (f,) = post_facts(a, [fact(f"urn:follow:{i}", "public")])
        wait_for(lambda f=f: f["id"] in received_ids(b), 60, what=f"fact {i} at B")
        wait_for(lambda: a.node.new_facts.waiting == 1, 60, what="B to wait again")
    assert q(b.target, "SELECT COUNT(*) FROM facts WHERE received_from = ?", (node_id(a),)) == [(3,)]


def test_without_pull_wait_the_schedule_only_polls(start_node):
    a = start_node("a")
    b = start_node("b", args=("--pull-interval", HOUR, "--pull-wait", "0"))
    federate(a, b)
    # B's first pass has completed (it pulled A) ...
    wait_for(lambda: q(b.target, "SELECT COUNT(*) FROM replication_state WHERE last_success_at IS NOT NULL")
             == [(1,)], 60, what="B's first pass")
    # ... and left no request waiting at A, where a follower would have opened its next one at once.
    time.sleep(0.5)
    assert a.node.new_facts.waiting == 0


def test_a_peer_that_answers_at_once_is_left_to_the_interval(start_node):
    peer = FakePeer(name="no-wait").up()  # answers every page at once, as a reference node does
    try:
        peer.add(peer.make("ex:one"))
        b = start_node("b", args=("--pull-interval", "0.2", "--pull-wait", "25"))
        peer.register_on(b)
        wait_for(lambda: len(peer.hits) >= 6, 60, what="a few passes")
        waits = [h for h in peer.hits if "wait" in h.query]
        # The first passes ask to wait; once a long-poll came back at once with nothing, the
        # peer is pulled by the interval only: every later request is a plain page.
        assert waits and waits[0].query["wait"] == "25"
        last_wait = peer.hits.index(waits[-1])
        assert all("wait" not in h.query for h in peer.hits[last_wait + 1:])
        assert len(waits) <= 2
    finally:
        peer.down()
