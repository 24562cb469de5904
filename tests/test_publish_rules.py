"""What the publisher leaves out of, or changes in, a page (in process, real SQLite)."""

from __future__ import annotations

import json

from stigmem_node.clock import Clock
from stigmem_node.node import Node
from stigmem_node.peer_auth import AuthenticatedPeer
from stigmem_node.tokens import PeerAuth, VerifiedToken

SCOPES = ("company", "public")
PEER = AuthenticatedPeer(VerifiedToken(PeerAuth("p", "stigmem:node:p", "active", ()), {}, "n", 0, SCOPES, "k"), SCOPES)


def fact(relation: str, **extra) -> dict:
    body = {"entity": "stigmem://t/e", "relation": relation, "value": {"type": "string", "v": relation},
            "source": "s", "scope": "company"}
    body.update(extra)
    return body


def page(node: Node) -> list[dict]:
    return json.loads(node.publisher.page(PEER, cursor=None, limit=500, scope=None))["facts"]


def test_instruction_facts_stay_home_unless_the_operator_opts_in(tmp_path, engine):
    settings = engine.settings(tmp_path / "n.db")
    node = Node(settings)
    bodies = [fact("memory:plain"), fact("memory:do", value={"type": "string", "v": "x", "interpret_as": "instruction"}),
              fact("instruction:run"), fact("memory:other", entity="instruction:queue")]
    node.facts.assert_many(node.facts.validate_batch(bodies))
    assert [e["fact"]["relation"] for e in page(node)] == ["memory:plain"]
    node.close()
    opted = Node(settings.with_overrides(federate_instructions=True))
    assert len(page(opted)) == 4


def test_facts_older_than_29_days_are_served_without_their_hlc(tmp_path, engine):
    db = tmp_path / "n.db"
    then = Node(engine.settings(db), clock=Clock(offset_s=-31 * 86400))
    (old,) = then.facts.assert_many(then.facts.validate_batch([fact("memory:old")]))
    then.close()
    now = Node(engine.settings(db))
    (new,) = now.facts.assert_many(now.facts.validate_batch([fact("memory:new")]))
    entries = {e["fact"]["id"]: e for e in page(now)}
    assert entries[old.fact["id"]]["fact"]["hlc"] is None
    assert entries[new.fact["id"]]["fact"]["hlc"] == new.fact["hlc"]
    # Everything else about the old fact is as stored, its signature included.
    assert entries[old.fact["id"]]["fact"]["cid"] == old.fact["cid"]


def test_a_page_of_large_facts_is_cut_at_the_byte_budget_and_says_has_more(tmp_path, engine):
    from stigmem_node.publish import MAX_PAGE_CHARS

    node = Node(engine.settings(tmp_path / "n.db"))
    big = "x" * (250 * 1024)
    bodies = [fact(f"memory:big{i}", value={"type": "text", "v": big}) for i in range(40)]  # ~10 MiB
    node.facts.assert_many(node.facts.validate_batch(bodies))
    first = json.loads(node.publisher.page(PEER, cursor=None, limit=500, scope=None))
    assert 1 <= len(first["facts"]) < 40 and first["has_more"] is True
    assert sum(len(json.dumps(e)) for e in first["facts"]) <= MAX_PAGE_CHARS + 1024
    rest = json.loads(node.publisher.page(PEER, cursor=first["cursor"], limit=500, scope=None))
    assert len(first["facts"]) + len(rest["facts"]) == 40 and rest["has_more"] is False
