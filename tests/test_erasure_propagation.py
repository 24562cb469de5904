"""Erasure reaches every peer: subscribers pull the origin's tombstones after its facts,
verify them against the origin's pinned keys, erase their copies, keep the tombstone, and
audit it, all without the content.  Three real nodes (A the origin, B and C subscribers), one
of them down during the erasure; a peer whose tombstones are forged, foreign or broken; the
erased facts refused when they arrive again; and a tombstone signed with a rotated key."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

from stigmem_node import tombstones as tm
from stigmem_node.clock import iso
from tests.fakepeer import FakePeer
from tests.nodes import ServedNode
from tests.test_key_rotation import wait_for_key
from tests.test_replication import by_node, federate, pull


def fact(entity: str, v: str, scope: str = "company") -> dict:
    return {"entity": entity, "relation": "rel", "value": {"type": "string", "v": v}, "source": "test",
            "scope": scope}


def post(n: ServedNode, *facts: dict) -> list[dict]:
    res = n.client().post("/v1/facts", json={"facts": list(facts)})
    assert res.status_code in (200, 201), res.text
    return res.json()["facts"]


def fact_ids(n: ServedNode) -> set[str]:
    return {r[0] for r in n.sql("SELECT id FROM facts")}


def audit(n: ServedNode) -> list[tuple]:
    return n.sql("SELECT event_type, actor, reason, detail FROM audit_log ORDER BY seq")


def test_an_erasure_reaches_every_subscriber_including_one_that_was_down(start_node):
    a, b, c = start_node("a"), start_node("b"), start_node("c")
    federate(a, b)
    federate(a, c)
    secret, person = f"SECRET-{uuid.uuid4().hex}", f"person:{uuid.uuid4().hex}"
    one, kept, e1, e2 = post(a, fact("doc:1", secret), fact("doc:2", "stays"), fact(person, "name", "public"),
                             fact(person, "address"))
    for n in (b, c):
        rc, summary = pull(n)
        assert rc == 0 and summary["new"] == 4, summary
    a_id = a.well_known()["node_id"]

    c.stop()  # C is down during the erasure
    assert a.client().delete(f"/v1/facts/{one['id']}", params={"reason": "right_to_erasure"}).status_code == 200
    res = a.client().post("/v1/tombstones", json={"entity": person, "reason": "legal"})
    assert res.status_code == 201 and res.json()["facts_erased"] == 2

    # B's fact cursor is already past every erased fact: its tombstone cursor is its own.
    rc, summary = pull(b)
    assert rc == 0 and summary["tombstones"] == 2 and summary["erased"] == 3, summary
    assert fact_ids(b) == {kept["id"]}
    for erased in (one, e1, e2):  # by its id, or with its entity: 410 on the subscriber too
        res = b.client().get(f"/v1/facts/{erased['id']}")
        assert (res.status_code, res.json()["error"]) == (410, "fact_erased")
    assert b.client().get(f"/v1/facts/{uuid.uuid4()}").status_code == 404  # never stored
    assert sorted(r[0] for r in b.sql("SELECT fact_id FROM erased_facts")) == sorted([e1["id"], e2["id"]])
    status = b.client().get(f"/v1/tombstones/{person}").json()
    assert status["erased"] is True and status["tombstones"][0]["received_from"] is not None
    applied = [r for r in audit(b) if r[0] == "fact_erased"]
    assert {r[1] for r in applied} == {f"peer:{a_id}"} and {r[2] for r in applied} == {"right_to_erasure", "legal"}
    assert sorted(i for r in applied for i in json.loads(r[3])["fact_ids"]) == sorted([one["id"], e1["id"], e2["id"]])
    for row in audit(b):
        assert secret not in json.dumps(row) and person not in json.dumps(row)

    rc, again = pull(b)  # nothing twice
    assert rc == 0 and again["tombstones"] == 0 and again["erased"] == 0, again

    c2 = start_node("c")  # C comes back on its database and catches up
    rc, summary = pull(c2)
    assert rc == 0 and summary["tombstones"] == 2 and summary["erased"] == 3, summary
    assert fact_ids(c2) == {kept["id"]}
    assert sorted(r[0] for r in c2.sql("SELECT fact_id FROM erased_facts")) == sorted([e1["id"], e2["id"]])

    # The tombstones B and C received are theirs to keep, never served onwards.
    for n in (b, c2):
        assert n.sql("SELECT COUNT(*) FROM tombstones WHERE received_from IS NOT NULL") == [(2,)]


def test_only_the_origins_signature_erases_and_refusals_are_audited(start_node):
    b = start_node("b")
    peer = FakePeer(name="origin").up()
    try:
        peer.register_on(b)
        f1, f2, f3 = peer.add(peer.make("ex:one"), peer.make("ex:two"), peer.make("ex:three"))
        rc, summary = pull(b)
        assert rc == 0 and summary["new"] == 3, summary
        other = FakePeer(name="other")
        peer.tombstones = [
            peer.tombstone(f1),  # the origin's own: applied
            peer.tombstone(f2, key=other.key),  # signed by another key
            peer.tombstone(f3, origin_node_id=other.node_id),  # names another origin
            {"kind": "fact", "fact_id": f3["fact"]["id"]},  # not a tombstone
        ]
        rc, summary = pull(b)
        assert rc == 0, summary
        (result,) = by_node(summary).values()
        assert (result["tombstones"], result["erased"], result["tombstones_refused"]) == (1, 1, 3), result
        assert fact_ids(b) == {f2["fact"]["id"], f3["fact"]["id"]}
        refused = [r for r in audit(b) if r[0] == "tombstone_refused"]
        assert sorted(r[2] for r in refused) == ["invalid_signature", "invalid_tombstone", "not_origin"]
        # The refused ones are not kept, and a later pull does not ask for them again.
        assert b.sql("SELECT COUNT(*) FROM tombstones") == [(1,)]
        rc, again = pull(b)
        assert rc == 0 and again["tombstones_refused"] == 0, again
    finally:
        peer.down()


def test_after_the_origins_tombstones_the_erased_facts_are_refused_whenever_they_arrive(start_node):
    """A fact tombstone and an entity tombstone from the origin: the same fact id, and a fact of
    the entity timestamped at or before ``erased_at``, are refused (``fact_rejected``, reason
    ``fact_erased``) when the origin serves them again; a newer fact of the entity is taken."""
    b = start_node("b")
    peer = FakePeer(name="origin").up()
    try:
        peer.register_on(b)
        secret = f"SECRET-{uuid.uuid4().hex}"
        one, held = peer.add(peer.make("ex:one", v=secret), peer.make("ex:ent", v=secret))
        rc, summary = pull(b)
        assert rc == 0 and summary["new"] == 2, summary
        unseen = peer.make("ex:ent", v="not yet served")  # timestamped before the erasure
        time.sleep(0.01)
        ent = tm.Tombstone(kind="entity", fact_id=None, entity="ex:ent", cid=None, erased_at=iso(datetime.now(UTC)),
                           origin_node_id=peer.node_id, reason="legal")
        peer.tombstones = [peer.tombstone(one), {**ent.to_wire(), "origin_sig": tm.sign_tombstone(peer.key, ent)}]
        rc, summary = pull(b)
        assert rc == 0 and (summary["tombstones"], summary["erased"]) == (2, 2), summary
        assert fact_ids(b) == set()
        with b.client() as c:  # the ids b held answer 410; one it never held, 404
            assert c.get(f"/v1/facts/{held['fact']['id']}").status_code == 410
            assert c.get(f"/v1/facts/{unseen['fact']['id']}").status_code == 404

        time.sleep(0.01)
        newer = peer.make("ex:ent", v="after the erasure")
        # An id erased with its entity stays erased, even on a newer fact of another entity.
        reused = peer.make("ex:elsewhere", v="same id, later", fact_id=held["fact"]["id"])
        peer.add(one, held, unseen, newer, reused)  # the origin serves them (again)
        rc, summary = pull(b)
        assert rc == 0 and (summary["new"], summary["rejected"]) == (1, 4), summary
        assert fact_ids(b) == {newer["fact"]["id"]}
        refused = [r for r in audit(b) if r[0] == "fact_rejected"]
        assert {r[2] for r in refused} == {"fact_erased"}
        assert sorted(json.loads(r[3])["fact_id"] for r in refused) == sorted(
            e["fact"]["id"] for e in (one, held, unseen, reused))
        with b.client() as c:
            assert c.get(f"/v1/facts/{held['fact']['id']}").status_code == 410
        for row in audit(b):
            assert secret not in json.dumps(row)
        assert secret not in b.log()
    finally:
        peer.down()


def test_a_tombstone_signed_with_the_origins_rotated_key_is_applied_after_one_refresh(start_node):
    """The origin rotates its key after B pulled its fact, then erases it: B's fact cursor is
    past the fact, so only the tombstone carries the new key; B follows the endorsed rotation
    (one well-known refresh) and applies it."""
    a, b = start_node("a"), start_node("b")
    federate(a, b)
    (one, kept) = post(a, fact("doc:rotated", "x"), fact("doc:kept", "y"))
    rc, summary = pull(b)
    assert rc == 0 and summary["new"] == 2, summary
    rotated = a.cli_json("keys", "rotate", "--grace", "1")
    wait_for_key(a, rotated["key_id"])
    assert a.client().delete(f"/v1/facts/{one['id']}", params={"reason": "incorrect"}).status_code == 200
    rc, summary = pull(b)
    assert rc == 0 and (summary["new"], summary["tombstones"], summary["erased"], summary["tombstones_refused"]) == (
        0, 1, 1, 0), summary
    assert summary["duplicates"] == 0, summary  # no fact page carried the new key
    assert fact_ids(b) == {kept["id"]}
    assert [r[1] for r in audit(b) if r[0] == "peer_key_rotated"] == ["node:pull"]
    assert [r for r in audit(b) if r[0] == "tombstone_refused"] == []
