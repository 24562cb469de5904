"""``facts``: assert and list this node's facts."""

from __future__ import annotations

import json
from typing import Any

import click

from stigmem_node.cli._click import LIMIT, Arg, command, group
from stigmem_node.cli._common import EXIT_OK, Globals, cli_actor, emit, open_node, table
from stigmem_node.vocabulary import DEFAULT_ERASURE_REASON, ERASURE_REASONS, SCOPES, VALUE_TYPES

facts = group("facts", help="this node's facts")


@command(facts, "add", help="assert a fact")
@click.argument("entity", cls=Arg, help="what the fact is about")
@click.argument("relation", cls=Arg, help="what it says about it")
@click.argument("value", cls=Arg, help="the value as text: true or false for boolean, a JSON number for number, "
                                       "null for null")
@click.option("--type", "value_type", type=click.Choice(VALUE_TYPES), default="string", show_default=True,
              help="how VALUE is read")
@click.option("--scope", type=click.Choice(SCOPES), default="local", show_default=True,
              help="who may see the fact (local: never leaves the node)")
@click.option("--source", default="cli", show_default=True, help="who asserts the fact")
@click.option("--confidence", type=float, default=1.0, show_default=True, help="from 0 to 1")
@click.option("--valid-until", help="RFC 3339 time")
def cmd_facts_add(g: Globals, *, entity: str, relation: str, value: str, value_type: str, scope: str, source: str,
                  confidence: float, valid_until: str | None) -> int:
    node = open_node(g)
    from stigmem_node.facts import value_from_text

    v = value_from_text(value_type, value)  # the same JSON value the HTTP API takes
    body: dict[str, Any] = {"entity": entity, "relation": relation, "value": {"type": value_type, "v": v},
                            "source": source, "scope": scope, "confidence": confidence}
    if valid_until:
        body["valid_until"] = valid_until
    (stored,) = node.facts.assert_many([node.facts.validate_one(body)])
    emit(g, stored.fact, lambda f: f"{'Stored' if stored.created else 'Already stored'} {f['id']} "
                                   f"(seq {f['seq']}, {f['scope']}, {f['cid']})")
    return EXIT_OK


@command(facts, "list", help="list facts, oldest first")
@click.option("--entity", help="only facts about this entity")
@click.option("--relation", help="only facts of this relation")
@click.option("--scope", type=click.Choice(SCOPES), help="only facts of this scope")
@click.option("--limit", type=LIMIT, default=50, show_default=True, help="at most this many facts")
@click.option("--include-expired", is_flag=True, help="also list facts whose valid_until has passed")
def cmd_facts_list(g: Globals, *, entity: str | None, relation: str | None, scope: str | None, limit: int,
                   include_expired: bool) -> int:
    node = open_node(g)
    found, _, _ = node.facts.query(cursor=None, limit=limit, include_expired=include_expired, entity=entity,
                                   relation=relation, scope=scope, source=None)

    def human(fs: list[dict[str, Any]]) -> str:
        if not fs:
            return "No facts."
        rows = [[str(f["seq"]), f["scope"], f["entity"], f["relation"], json.dumps(f["value"]["v"])[:60],
                 f["received_from"] or "local"] for f in fs]
        return table(rows, ["SEQ", "SCOPE", "ENTITY", "RELATION", "VALUE", "FROM"])

    emit(g, found, human)
    return EXIT_OK


@command(facts, "erase", help="erase a fact, or every fact of an entity, and keep a tombstone")
@click.argument("fact_id", cls=Arg, required=False, help="the fact's id (or use --entity)")
@click.option("--entity", help="erase every fact of this entity instead")
@click.option("--reason", type=click.Choice(ERASURE_REASONS), default=DEFAULT_ERASURE_REASON, show_default=True,
              help="why the fact is erased (recorded in the tombstone and the audit trail)")
def cmd_facts_erase(g: Globals, *, fact_id: str | None, entity: str | None, reason: str) -> int:
    if (fact_id is None) == (entity is None):
        raise click.UsageError("give either a fact id or --entity, not both and not neither")
    node = open_node(g)
    who = cli_actor()
    if entity is not None:
        view = node.erasure.erase_entity(entity, reason, actor=who.name, remote_addr=who.remote_addr)
    else:
        view = node.erasure.erase_fact(fact_id, reason, actor=who.name, remote_addr=who.remote_addr)

    def human(v: dict[str, Any]) -> str:
        if v["kind"] == "entity":
            return f"Erased {v['facts_erased']} fact(s) of the entity (tombstone seq {v['seq']}, {v['reason']})"
        if not v["created"]:
            return f"Already erased {v['fact_id']} at {v['erased_at']}"
        served = "served to peers" if not v["local_only"] else "local only"
        return f"Erased {v['fact_id']} (tombstone seq {v['seq']}, {v['reason']}, {served})"

    emit(g, view, human)
    return EXIT_OK
