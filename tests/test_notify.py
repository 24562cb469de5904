"""Signed notifications between real nodes: ``POST /v1/federation/notify``.

A node with ``--notify-peers`` tells each peer that may read its new facts (and holds no
long-poll on it) to pull; the peer pulls at once instead of at its interval.  The receiving
side refuses what a token's checks refuse: a replay, a date outside the window, a wrong key,
a body altered by a byte; every refusal is audited.  Both engines.
"""

from __future__ import annotations

import json

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stigmem_node import notification as nt
from stigmem_node.encoding import b64url_decode
from stigmem_node.keys import KeySigner, public_key_from_b64, verifies
from tests.fakepeer import FakePeer
from tests.test_replication import audit, fact, federate, node_id, post_facts, q, wait_for

pytestmark = pytest.mark.slow

HOUR = "3600"
NOTIFY = "/v1/federation/notify"


def sent(node, outcome: str) -> float:
    """The node's count of notifications that ended with ``outcome`` (from its /metrics)."""
    text = httpx.get(node.url + "/metrics", timeout=30).text
    line = f'stigmem_notifications_sent_total{{outcome="{outcome}"}} '
    return next(float(x.removeprefix(line)) for x in text.splitlines() if x.startswith(line))


def received_ids(n) -> set[str]:
    return {r[0] for r in q(n.target, "SELECT id FROM facts WHERE received_from IS NOT NULL")}


def first_pass_done(n) -> bool:
    return q(n.target, "SELECT COUNT(*) FROM replication_state WHERE last_success_at IS NOT NULL") == [(1,)]


def post(node, note: nt.SignedNotification, *, body: bytes | None = None, headers: dict | None = None) -> httpx.Response:
    return httpx.post(node.url + NOTIFY, content=note.body if body is None else body,
                      headers=note.headers if headers is None else headers, timeout=30)


def mint(sender, receiver, *, now_ms: int | None = None, signer=None) -> nt.SignedNotification:
    return nt.mint(signer or sender.node.identity, issuer=node_id(sender), audience=node_id(receiver),
                   now_ms=sender.node.clock.now_ms() if now_ms is None else now_ms)


def test_a_notified_subscriber_pulls_at_once_not_at_its_interval(start_node):
    a = start_node("a", args=("--notify-peers",))
    # B pulls once at start, then every hour, and holds no long-poll: only a notification can
    # bring A's later facts within the test.
    b = start_node("b", args=("--pull-interval", HOUR, "--pull-wait", "0"))
    federate(a, b)
    wait_for(lambda: first_pass_done(b), 60, what="B's first pass")
    for i in range(3):
        (f,) = post_facts(a, [fact(f"urn:notify:{i}", "public")])
        wait_for(lambda f=f: f["id"] in received_ids(b), 60, what=f"fact {i} at B")
    assert sent(a, "delivered") >= 1


def test_a_follower_waiting_on_a_long_poll_is_not_notified(start_node):
    a = start_node("a", args=("--notify-peers",))
    b = start_node("b", args=("--pull-interval", HOUR, "--pull-wait", "25"))
    federate(a, b)
    wait_for(lambda: a.node.new_facts.waiting == 1, 60, what="B's long-poll to wait at A")
    (f,) = post_facts(a, [fact("urn:notify:followed", "public")])
    wait_for(lambda: f["id"] in received_ids(b), 60, what="the fact at B")
    notifier = a.node._background.notifier
    wait_for(lambda: notifier.rounds >= 1, 60, what="A's notifier to consider the commit")
    assert notifier.queued == 0 and sent(a, "delivered") == 0


def test_facts_a_peer_may_not_read_are_not_notified(start_node):
    a = start_node("a", args=("--notify-peers",))
    peer = FakePeer(name="notified").up()
    try:
        peer.notify_status = 202
        peer.register_on(a, scopes="public")
        notifier = a.node._background.notifier
        # Never shared, not granted to this peer, an instruction (not federated by default).
        post_facts(a, [fact("urn:notify:local", "local"), fact("urn:notify:company", "company"),
                       fact("instruction:notify", "public")])
        wait_for(lambda: notifier.rounds >= 1, 60, what="A's notifier to consider the commit")
        assert notifier.queued == 0 and peer.notifications == []
        post_facts(a, [fact("urn:notify:public", "public")])
        wait_for(lambda: len(peer.notifications) == 1, 60, what="a notification of the public fact")
        body, headers = peer.notifications[0]
        # Signed over the exact body by A's published key, addressed to the peer, in the window.
        claims = json.loads(body)
        assert claims["typ"] == nt.NOTIFICATION_TYPE and claims["iss"] == node_id(a) and claims["sub"] == peer.node_id
        assert abs(claims["iat"] - a.node.clock.now_ms()) < nt.WINDOW_MS
        key = public_key_from_b64(a.well_known()["federation_pubkey"])
        assert verifies(key, b64url_decode(headers["stigmem-signature"]), body)
        assert headers["stigmem-key-id"] == a.node.identity.key_id
        wait_for(lambda: sent(a, "delivered") == 1, 60, what="the delivery to be counted")
    finally:
        peer.down()


def test_a_peer_without_the_endpoint_is_left_alone_after_its_404(start_node):
    a = start_node("a", args=("--notify-peers",))
    peer = FakePeer(name="reference-like").up()  # answers 404, as a node without notifications does
    try:
        peer.register_on(a, scopes="public")
        post_facts(a, [fact("urn:notify:one", "public")])
        wait_for(lambda: len(peer.notifications) == 1, 60, what="the first notification")
        notifier = a.node._background.notifier
        rounds = notifier.rounds
        post_facts(a, [fact("urn:notify:two", "public")])
        wait_for(lambda: notifier.rounds > rounds, 60, what="A's notifier to consider the second commit")
        assert notifier.queued == 1 and len(peer.notifications) == 1
        wait_for(lambda: sent(a, "unsupported") == 1, 60, what="the 404 to be counted")
        assert sent(a, "delivered") == 0
    finally:
        peer.down()


# -- the receiving side --------------------------------------------------------------------


@pytest.fixture
def pair(start_node):
    a = start_node("a")
    b = start_node("b", args=("--pull-interval", HOUR, "--pull-wait", "0"))
    federate(a, b)
    wait_for(lambda: first_pass_done(b), 60, what="B's first pass")
    return a, b


def test_a_valid_notification_starts_a_pass_and_a_replay_is_refused_and_audited(pair):
    a, b = pair
    assert a.node._background.notifier is None  # sending is off unless asked for
    note = mint(a, b)
    first = post(b, note)
    assert first.status_code == 202 and first.json()["pull"] in ("started", "queued")
    again = post(b, note)
    assert again.status_code == 401 and again.json()["error"] == "nonce_already_seen"
    rows = [r for r in audit(b, "replay_attempt") if r["detail"].get("path") == NOTIFY]
    assert len(rows) == 1 and rows[0]["detail"]["issuer"] == node_id(a)


def test_a_node_without_a_schedule_verifies_the_notification_but_pulls_nothing(start_node):
    a, b = start_node("a"), start_node("b")
    federate(a, b)
    res = post(b, mint(a, b))
    assert res.status_code == 202 and res.json() == {"pull": "not_following"}


@pytest.mark.parametrize("skew_ms, code", [(-(nt.WINDOW_MS + 60_000), "notification_expired"),
                                           (nt.WINDOW_MS + 60_000, "iat_in_future")])
def test_a_notification_outside_the_window_is_refused(pair, skew_ms: int, code: str):
    a, b = pair
    res = post(b, mint(a, b, now_ms=a.node.clock.now_ms() + skew_ms))
    assert res.status_code == 401 and res.json()["error"] == code


def test_a_notification_signed_by_another_key_is_refused_and_audited(pair):
    a, b = pair
    note = mint(a, b, signer=KeySigner(Ed25519PrivateKey.generate()))
    res = post(b, note)
    assert res.status_code == 401 and res.json()["error"] == "invalid_signature"
    rows = audit(b, "notification_rejected")
    assert [r["reason"] for r in rows] == ["invalid_signature"] and rows[0]["peer_id"] is not None


def test_a_body_altered_by_one_byte_is_refused(pair):
    a, b = pair
    note = mint(a, b)
    altered = note.body.replace(b'"iat":', b'"iat": ', 1)  # the same JSON, other bytes
    res = post(b, note, body=altered)
    assert res.status_code == 401 and res.json()["error"] == "invalid_signature"
    # The untouched notification still works: the refusal spent nothing.
    assert post(b, note).status_code == 202


def test_malformed_unsigned_unknown_and_foreign_notifications_are_refused(pair, start_node):
    a, b = pair
    note = mint(a, b)
    unsigned = {k: v for k, v in note.headers.items() if k != nt.SIGNATURE_HEADER}
    res = post(b, note, headers=unsigned)
    assert (res.status_code, res.json()["error"]) == (401, "notification_signature_required")
    res = post(b, note, body=b"x" * (nt.MAX_NOTIFICATION_BYTES + 100))
    assert (res.status_code, res.json()["error"]) == (400, "malformed_notification")
    res = post(b, note, body=b"[]")
    assert (res.status_code, res.json()["error"]) == (400, "malformed_notification")
    stranger = start_node("c")
    res = post(b, mint(stranger, b))
    assert (res.status_code, res.json()["error"]) == (401, "peer_not_registered")
    res = post(b, mint(a, stranger))  # A may notify B, but this one is addressed to C
    assert (res.status_code, res.json()["error"]) == (401, "invalid_sub")
    codes = [r["reason"] for r in audit(b, "notification_rejected")]
    assert sorted(codes) == sorted(["notification_signature_required", "malformed_notification",
                                    "malformed_notification", "peer_not_registered", "invalid_sub"])


def test_a_suspended_peer_may_not_notify(pair):
    a, b = pair
    with b.client() as c:
        peer_id = next(p["peer_id"] for p in c.get("/v1/federation/peers").json()["peers"]
                       if p["node_id"] == node_id(a))
        assert c.post(f"/v1/federation/peers/{peer_id}/suspend", json={"reason": "test"}).status_code == 200
    res = post(b, mint(a, b))
    assert (res.status_code, res.json()["error"]) == (403, "peer_not_active")


def test_notifications_during_a_pass_queue_one_more_pass_after_it(start_node):
    from tests.fakepeer import Behaviour

    b = start_node("b", args=("--pull-interval", HOUR, "--pull-wait", "0"))
    peer = FakePeer(name="notifying").up()
    try:
        peer.add(peer.make("ex:first"))
        peer.register_on(b)
        wait_for(lambda: first_pass_done(b), 60, what="B's first pass")
        signer = KeySigner(peer.key)

        def notify() -> str:
            note = nt.mint(signer, issuer=peer.node_id, audience=node_id(b), now_ms=b.node.clock.now_ms())
            res = post(b, note)
            assert res.status_code == 202, res.text
            return res.json()["pull"]

        before = len(peer.hits)
        peer.then(Behaviour(kind="slow", hang_s=2.0))  # the next page takes 2 s
        assert notify() == "started"
        wait_for(lambda: peer.in_flight == 1, 60, what="the slow page to be asked for")
        assert [notify(), notify()] == ["queued", "queued"]
        # The pass in flight ends, and one more starts at once, not an hour later.
        wait_for(lambda: len(peer.hits) >= before + 2, 60, what="the queued pass")
    finally:
        peer.down()


def test_a_peer_whose_pulls_fail_is_not_pulled_early_by_its_notifications(start_node):
    b = start_node("b", args=("--pull-interval", HOUR, "--pull-wait", "0"))
    peer = FakePeer(name="failing").up()
    try:
        peer.register_on(b)
        wait_for(lambda: first_pass_done(b), 60, what="B's first pass")
        peer.set("status", status=400)  # not retried: the pass fails at once

        def notify() -> str:
            note = nt.mint(KeySigner(peer.key), issuer=peer.node_id, audience=node_id(b), now_ms=b.node.clock.now_ms())
            return post(b, note).json()["pull"]

        assert notify() == "started"
        # Once the failed pass has ended (meanwhile a notification only queues another), the
        # backoff stands: notifications start nothing.
        wait_for(lambda: notify() == "backing_off", 60, what="the failed pass to end")
        hits = len(peer.hits)
        assert notify() == "backing_off" and len(peer.hits) == hits
    finally:
        peer.down()


def test_serve_notify_peers_turns_notifications_on(start_process_node, start_node):
    """The flag of ``stigmem-node serve``, in a process of its own, as an operator runs it."""
    a = start_process_node("a", args=("--notify-peers",))
    b = start_node("b", args=("--pull-interval", HOUR, "--pull-wait", "0"))
    federate(a, b)
    wait_for(lambda: first_pass_done(b), 60, what="B's first pass")
    (f,) = post_facts(a, [fact("urn:notify:process", "public")])
    wait_for(lambda: f["id"] in received_ids(b), 60, what="the fact at B")
    assert sent(a, "delivered") >= 1


def test_a_notification_under_a_rotated_key_makes_the_receiver_follow_the_rotation(pair):
    from datetime import timedelta

    a, b = pair
    a.node.rotate_key(timedelta(seconds=0), actor="test")  # B has not seen the new key yet
    res = post(b, mint(a, b))
    assert (res.status_code, res.json()["error"]) == (401, "invalid_signature")
    # B re-reads A's well-known in the background and adopts the endorsed key: a new
    # notification under it goes through.
    wait_for(lambda: post(b, mint(a, b)).status_code == 202, 60, what="B to follow A's rotation")
    assert [r["actor"] for r in audit(b, "peer_key_rotated")] == ["node:auth"]
