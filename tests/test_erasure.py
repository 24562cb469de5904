"""Erasure on the origin, end to end on real nodes: DELETE /v1/facts/{id}, POST /v1/tombstones,
GET /v1/tombstones/{entity}, 410 fact_erased, the content really gone from the database (the
bytes of the SQLite files; every table's text on PostgreSQL), the schema's guard, audit rows and
logs without the content, tombstones served to peers, re-ingestion refused, and the CLI."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stigmem_node.keys import public_key_from_b64
from stigmem_node.tombstones import tombstone_from_wire, verify_tombstone
from tests.engines import SqlError
from tests.nodes import ServedNode
from tests.test_pull import Fed, _federation
from tests.test_replication import federate, pull

ERASE_PATH = "/v1/tombstones"


@pytest.fixture
def fed(start_node) -> Iterator[Fed]:
    """A sharing company and public; B granted company and public, C only public."""
    yield from _federation(start_node("a"), start_node)


def marker() -> str:
    return f"ERASE-ME-{uuid.uuid4().hex}"


def post(n: ServedNode, *facts: dict) -> list[dict]:
    res = n.client().post("/v1/facts", json={"facts": list(facts)})
    assert res.status_code in (200, 201), res.text
    return res.json()["facts"]


def fact(entity: str, scope: str = "company", v: str = "x", source: str = "test") -> dict:
    return {"entity": entity, "relation": "rel", "value": {"type": "string", "v": v}, "source": source,
            "scope": scope}


def assert_error(res: Any, status: int, code: str) -> None:
    assert res.status_code == status, (res.status_code, res.text)
    assert res.json()["error"] == code, res.text


def audit_rows(n: ServedNode) -> list[tuple]:
    return n.sql("SELECT event_type, actor, reason, detail FROM audit_log ORDER BY seq")


def tombstone_page(f: Fed, *, since: str | None = None, limit: int | None = None, as_c: bool = False,
                   tv: str | None = "t2.1", status: int = 200) -> dict:
    params = [f"tv={tv}"] if tv is not None else []
    params += [f"since={since}"] if since is not None else []
    params += [f"limit={limit}"] if limit is not None else []
    path = "/v1/federation/tombstones" + ("?" + "&".join(params) if params else "")
    res = f.get(path, f.mint(path, as_c=as_c))
    assert res.status_code == status, res.text
    return res.json()


# --------------------------------------------------------------------------- erasing one fact


def test_delete_erases_the_fact_leaves_a_signed_tombstone_and_answers_410(node: ServedNode):
    secret = marker()
    (kept, gone) = post(node, fact("person:kept", v="kept"), fact(f"person:{secret}", v=secret, source=secret))
    res = node.client().delete(f"/v1/facts/{gone['id']}", params={"reason": "right_to_erasure"})
    assert res.status_code == 200, res.text
    tomb = res.json()
    assert tomb["created"] is True and tomb["local_only"] is False and tomb["scopes"] == ["company"]
    assert (tomb["kind"], tomb["fact_id"], tomb["cid"], tomb["entity"]) == ("fact", gone["id"], gone["cid"], None)
    assert tomb["reason"] == "right_to_erasure" and tomb["origin_node_id"] == node.well_known()["node_id"]
    parsed = tombstone_from_wire({k: tomb[k] for k in ("kind", "fact_id", "entity", "cid", "erased_at",
                                                         "origin_node_id", "reason", "origin_sig")})
    assert verify_tombstone(public_key_from_b64(node.well_known()["federation_pubkey"]), parsed)
    assert secret not in res.text

    with node.client() as c:
        assert_error(c.get(f"/v1/facts/{gone['id']}"), 410, "fact_erased")
        assert c.get(f"/v1/facts/{kept['id']}").status_code == 200
        listed = c.get("/v1/facts", params={"limit": 500})
        assert [f["id"] for f in listed.json()["facts"]] == [kept["id"]]
        # total (and X-Total-Count, as reference clients read it) counts after erasure too
        assert listed.json()["total"] == 1 and listed.headers["X-Total-Count"] == "1"
        again = c.delete(f"/v1/facts/{gone['id']}")
        assert again.status_code == 200 and again.json()["created"] is False and again.json()["seq"] == tomb["seq"]
    assert node.sql("SELECT COUNT(*) FROM facts WHERE id = ?", (gone["id"],)) == [(0,)]
    assert node.sql("SELECT kind, fact_id, reason FROM tombstones") == [("fact", gone["id"], "right_to_erasure")]

    erased = [r for r in audit_rows(node) if r[0] == "fact_erased"]
    assert len(erased) == 1 and erased[0][2] == "right_to_erasure" and erased[0][1].startswith("apikey:")
    detail = json.loads(erased[0][3])
    assert detail["fact_ids"] == [gone["id"]] and detail["cids"] == [gone["cid"]] and detail["served"] is True
    for row in audit_rows(node):
        assert secret not in json.dumps(row)
    assert secret not in node.log()


def test_erasure_needs_facts_erase_and_bad_input_is_a_clear_error(node: ServedNode):
    (one,) = post(node, fact("person:x"))
    res = node.cli("apikey", "create", "--permissions", "facts:read,facts:write", "--json")
    assert res.returncode == 0, res.stderr
    writer = json.loads(res.stdout)["key"]
    with node.client(writer) as c:
        assert_error(c.delete(f"/v1/facts/{one['id']}"), 403, "permission_required")
        assert_error(c.post(ERASE_PATH, json={"entity": "person:x"}), 403, "permission_required")
        assert_error(c.get(f"{ERASE_PATH}/person:x"), 403, "permission_required")
    with node.client() as c:
        assert_error(c.delete(f"/v1/facts/{one['id']}", params={"reason": "because"}), 422, "invalid_erasure_reason")
        assert_error(c.delete("/v1/facts/no-such-fact"), 404, "fact_not_found")
        assert_error(c.post(ERASE_PATH, json={"fact_id": one["id"], "entity": "person:x"}), 422, "invalid_request")
        assert_error(c.post(ERASE_PATH, json={"reason": "legal"}), 422, "invalid_request")
        assert_error(c.post(ERASE_PATH, json={"fact_id": one["id"], "extra": 1}), 422, "invalid_request")
        assert_error(c.post(ERASE_PATH, json={"fact_id": 5}), 422, "invalid_request")
        assert_error(c.post(ERASE_PATH, json={"entity": ""}), 422, "invalid_request")
        assert_error(c.post(ERASE_PATH, json={"entity": "e", "reason": ["legal"]}), 422, "invalid_erasure_reason")
        assert_error(c.post(ERASE_PATH, content=b"{nope"), 400, "invalid_json")
        assert c.get(f"/v1/facts/{one['id']}").status_code == 200  # nothing was erased
    assert node.sql("SELECT COUNT(*) FROM tombstones") == [(0,)]


def test_the_schema_refuses_a_delete_without_a_tombstone_and_tombstones_are_append_only(node: ServedNode):
    (one,) = post(node, fact("person:guarded"))
    with pytest.raises(SqlError):
        node.sql("DELETE FROM facts WHERE id = ?", (one["id"],))
    assert node.sql("SELECT COUNT(*) FROM facts") == [(1,)]
    assert node.client().delete(f"/v1/facts/{one['id']}").status_code == 200
    for statement in ("DELETE FROM tombstones", "UPDATE tombstones SET reason = 'legal'",
                      "UPDATE tombstones SET fact_id = 'other'"):
        with pytest.raises(SqlError):
            node.sql(statement)
    assert node.sql("SELECT fact_id, reason FROM tombstones") == [(one["id"], "operator")]


def test_under_an_entity_tombstone_only_a_fact_whose_id_was_recorded_can_be_deleted(node: ServedNode):
    """The guard: an entity tombstone lets a fact row go only once its id is in erased_facts
    (which is append-only), so no erasure deletes a fact without leaving its id behind."""
    (old,) = post(node, fact("person:guarded"))
    with node.client() as c:
        assert c.post(ERASE_PATH, json={"entity": "person:guarded"}).json()["facts_erased"] == 1
        (later,) = post(node, fact("person:guarded", v="asserted after the erasure"))
    with pytest.raises(SqlError):
        node.sql("DELETE FROM facts WHERE id = ?", (later["id"],))
    assert node.sql("SELECT id FROM facts") == [(later["id"],)]
    for statement in ("DELETE FROM erased_facts", "UPDATE erased_facts SET fact_id = 'other'",
                      "UPDATE erased_facts SET tombstone_seq = tombstone_seq + 1"):
        with pytest.raises(SqlError):
            node.sql(statement)
    assert node.sql("SELECT fact_id FROM erased_facts") == [(old["id"],)]


# --------------------------------------------------------------------------- the bytes are gone


@pytest.mark.sqlite_only
def test_sqlite_the_erased_bytes_are_in_no_database_file(node: ServedNode):
    secret, kept = marker(), marker()
    facts = post(node, *[fact(f"e:{secret}:{i}", v=secret * 20, source=secret) for i in range(30)],
                 fact("e:kept", v=kept))
    node.node.store.db.checkpoint()
    files = [node.db, Path(f"{node.db}-wal")]

    def found(text: str) -> bool:
        return any(p.exists() and text.encode() in p.read_bytes() for p in files)

    assert found(secret) and found(kept)
    for f in facts[:-1]:
        assert node.client().delete(f"/v1/facts/{f['id']}").status_code == 200
    assert not found(secret), "the erased value is still in the database files"
    assert found(kept)


@pytest.mark.postgres_only
def test_postgres_the_erased_text_is_in_no_table(node: ServedNode):
    secret = marker()
    (gone, kept) = post(node, fact(f"e:{secret}", v=secret, source=secret), fact("e:kept", v="kept"))
    tables = [r[0] for r in node.sql("SELECT table_name FROM information_schema.tables"
                                     " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'")]

    def found(text: str) -> list[str]:
        return [t for t in tables if node.sql(f"SELECT COUNT(*) FROM {t} x WHERE x::text LIKE ?",
                                              (f"%{text}%",))[0][0]]

    assert found(secret) == ["facts"]
    assert node.client().delete(f"/v1/facts/{gone['id']}", params={"reason": "legal"}).status_code == 200
    assert found(secret) == []
    assert found("kept") == ["facts"]


@pytest.mark.postgres_only
def test_postgres_the_documented_vacuum_full_leaves_the_erased_bytes_in_no_database_file(node: ServedNode):
    """PostgreSQL zeroes no freed space, and ANALYZE (the erasure's own, run while other facts
    with the value still lived) copies sample values into pg_statistic.  The procedure of
    docs/security.md (ANALYZE facts, VACUUM FULL facts and pg_statistic, CHECKPOINT) leaves the bytes in no
    file of the database; the WAL is out of reach, as documented.  The files are read through
    pg_read_binary_file, which needs a superuser (as the test server's admin is)."""
    import psycopg

    if not node.sql("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")[0][0]:
        pytest.skip("reading the database's files needs a superuser")
    secret, kept = marker(), marker()
    facts = post(node, *[fact(f"e:{secret}:{i}", v=secret * 20, source=secret) for i in range(30)],
                 fact("e:kept", v=kept))

    def files_holding(text: str) -> list[str]:
        return [r[0] for r in node.sql(
            "SELECT f FROM pg_database d, pg_ls_dir('base/' || d.oid) f, LATERAL (SELECT 'base/' || d.oid || '/' || f"
            " AS p) x WHERE d.datname = current_database()"
            " AND position(?::bytea in pg_read_binary_file(x.p, 0, (pg_stat_file(x.p, true)).size, true)) > 0",
            (text.encode(),))]

    def run(*statements: str) -> None:
        with psycopg.connect(node.database_url, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    run("CHECKPOINT")
    assert files_holding(secret) and files_holding(kept)
    for f in facts[:-1]:
        assert node.client().delete(f"/v1/facts/{f['id']}", params={"reason": "legal"}).status_code == 200
    # As documented: with no other transaction open on the database (VACUUM FULL keeps every row
    # version an open transaction may still see): the node stopped (its upkeep may be running an
    # ANALYZE), and no autovacuum worker busy in it (the deletions above may have started one).
    node.stop()
    others = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
              " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL")
    for _attempt in range(5):
        for _ in range(600):  # at most about two minutes: an autovacuum of this small database ends sooner
            if not node.sql(others)[0][0]:
                break
            time.sleep(0.2)
        run("ANALYZE facts", "VACUUM FULL facts", "VACUUM FULL pg_statistic", "CHECKPOINT")
        holding = files_holding(secret)
        # An autovacuum worker may start at any moment, even during the procedure, and hold
        # the old row versions for its snapshot: as documented, the procedure is then run again.
        if not holding:
            break
    assert holding == [], ("the erased value is still in a file of the database", [
        node.sql("SELECT pg_filenode_relation(0, ?::oid)::text", (f.split(".")[0].split("_")[0],))[0][0]
        for f in holding])
    assert files_holding(kept)


# --------------------------------------------------------------------------- entities


def test_erasing_an_entity_erases_all_its_facts_and_the_operator_can_ask_when(node: ServedNode):
    secret = marker()
    entity = f"person:{secret}"
    facts = post(node, fact(entity, "company", v="a"), fact(entity, "local", v="b"), fact(entity, "public", v="c"),
                 fact("person:other"))
    with node.client() as c:
        before = c.get(f"{ERASE_PATH}/{entity}").json()
        assert before == {"entity": entity, "erased": False, "erased_at": None, "tombstones": []}
        res = c.post(ERASE_PATH, json={"entity": entity, "reason": "right_to_erasure"})
        assert res.status_code == 201, res.text
        tomb = res.json()
        assert tomb["facts_erased"] == 3 and tomb["kind"] == "entity" and tomb["entity"] == entity
        assert tomb["scopes"] == ["company", "local", "public"] and tomb["fact_id"] is None and tomb["cid"] is None
        after = c.get(f"{ERASE_PATH}/{entity}").json()
        assert after["erased"] is True and after["erased_at"] == tomb["erased_at"]
        assert [t["seq"] for t in after["tombstones"]] == [tomb["seq"]]
        for f in facts[:3]:  # erased with the entity: 410, as an id erased by itself
            assert_error(c.get(f"/v1/facts/{f['id']}"), 410, "fact_erased")
            assert secret not in c.get(f"/v1/facts/{f['id']}").text
        assert_error(c.get(f"/v1/facts/{uuid.uuid4()}"), 404, "fact_not_found")  # never stored
        # Erasing one of them again by id: already erased, by the entity's tombstone.
        again = c.delete(f"/v1/facts/{facts[0]['id']}")
        assert again.status_code == 200 and again.json()["created"] is False, again.text
        assert (again.json()["seq"], again.json()["kind"]) == (tomb["seq"], "entity")
        assert_error(c.delete(f"/v1/facts/{uuid.uuid4()}"), 404, "fact_not_found")
        assert [f["id"] for f in c.get("/v1/facts", params={"entity": entity}).json()["facts"]] == []
        assert c.get(f"/v1/facts/{facts[3]['id']}").status_code == 200
    (row,) = [r for r in audit_rows(node) if r[0] == "fact_erased"]
    detail = json.loads(row[3])
    assert sorted(detail["fact_ids"]) == sorted(f["id"] for f in facts[:3]) and detail["count"] == 3
    assert secret not in json.dumps(row) and "entity_sha256" in detail
    # What remains of the facts is their ids, each with the entity tombstone that erased it.
    assert sorted(node.sql("SELECT fact_id, tombstone_seq FROM erased_facts")) == sorted(
        (f["id"], tomb["seq"]) for f in facts[:3])


# --------------------------------------------------------------------------- served to peers


def test_peers_see_only_tombstones_of_what_they_could_receive_in_commit_order(fed: Fed):
    a = fed.a
    company, public, local = post(a, fact("p:1", "company"), fact("p:2", "public"), fact("p:3", "local"))
    post(a, fact("p:ent", "company"))
    empty = tombstone_page(fed)
    assert empty == {"v": 2, "tombstones": [], "revocations": [], "cursor": None, "has_more": False}
    assert tombstone_page(fed, since="7")["cursor"] == "7"
    path = "/v1/federation/facts?limit=500"
    assert len(fed.get(path, fed.mint(path)).json()["facts"]) == 3  # company, public and p:ent
    for f in (company, public, local):
        assert a.client().delete(f"/v1/facts/{f['id']}").status_code == 200
    assert a.client().post(ERASE_PATH, json={"entity": "p:ent", "reason": "legal"}).status_code == 201
    assert a.client().post(ERASE_PATH, json={"entity": "p:never-held"}).status_code == 201

    pulled = fed.get(path, fed.mint(path)).json()["facts"]  # erased facts and entities are in no pull page
    assert pulled == [], [e["fact"]["entity"] for e in pulled]

    b_page = tombstone_page(fed)  # B may read company and public
    got = [(t["kind"], t["fact_id"] or t["entity"]) for t in b_page["tombstones"]]
    assert got == [("fact", company["id"]), ("fact", public["id"]), ("entity", "p:ent")]
    a_key = public_key_from_b64(a.well_known()["federation_pubkey"])
    for t in b_page["tombstones"]:
        assert set(t) == {"kind", "fact_id", "entity", "cid", "erased_at", "origin_node_id", "reason", "origin_sig"}
        assert verify_tombstone(a_key, tombstone_from_wire(t))
    c_page = tombstone_page(fed, as_c=True)  # C only public
    assert [t["fact_id"] for t in c_page["tombstones"]] == [public["id"]]

    first = tombstone_page(fed, limit=1)
    assert len(first["tombstones"]) == 1 and first["has_more"] is True
    rest = tombstone_page(fed, since=first["cursor"])
    assert [t["fact_id"] or t["entity"] for t in rest["tombstones"]] == [public["id"], "p:ent"]
    assert rest["has_more"] is False
    assert tombstone_page(fed, since=rest["cursor"])["tombstones"] == []
    path = "/v1/federation/tombstones?tv=t2.1&since=abc"
    assert_error(fed.get(path, fed.mint(path)), 422, "invalid_cursor")
    # A subscriber that does not ask for t2.1 tombstones (a reference node) gets an empty page,
    # which it can store; an unknown version is refused.
    assert tombstone_page(fed, tv=None) == {"v": 2, "tombstones": [], "revocations": [], "cursor": None,
                                            "has_more": False}
    assert tombstone_page(fed, tv="t9", status=422)["field"] == "tv"


# --------------------------------------------------------------------------- received facts


def test_a_received_fact_erased_locally_is_not_served_and_never_ingested_again(start_node):
    a, b = start_node("a"), start_node("b")
    federate(a, b)
    secret = marker()
    old_entity = f"person:{secret}"
    one, two, three = post(a, fact("p:single", v=secret), fact(old_entity, v="x"), fact(old_entity, "public", v="y"))
    rc, summary = pull(b)
    assert rc == 0 and summary["new"] == 3, summary

    # B erases one received fact, and the entity: local tombstones, not served.
    res = b.client().delete(f"/v1/facts/{one['id']}", params={"reason": "incorrect"})
    assert res.status_code == 200 and res.json()["local_only"] is True and res.json()["origin_sig"] is None
    ent = b.client().post(ERASE_PATH, json={"entity": old_entity})
    assert ent.status_code == 201 and ent.json()["facts_erased"] == 2 and ent.json()["scopes"] == []
    assert b.sql("SELECT COUNT(*) FROM facts") == [(0,)]
    (later,) = post(a, fact(old_entity, v="after the erasure"))

    # Pull everything from A again: the erased facts are refused and audited, the newer one arrives.
    b.sql("UPDATE replication_state SET cursor = NULL")
    rc, summary = pull(b)
    assert rc == 0 and summary["new"] == 1 and summary["rejected"] == 3, summary
    assert [r[0] for r in b.sql("SELECT id FROM facts")] == [later["id"]]
    refused = [r for r in audit_rows(b) if r[0] == "fact_rejected"]
    assert sorted(json.loads(r[3])["fact_id"] for r in refused) == sorted(f["id"] for f in (one, two, three))
    assert {r[2] for r in refused} == {"fact_erased"}
    for row in audit_rows(b):
        assert secret not in json.dumps(row)
    assert secret not in b.log()


# --------------------------------------------------------------------------- command line


def test_cli_erases_a_fact_or_an_entity_with_clear_errors(node: ServedNode):
    one, two = post(node, fact("person:cli"), fact("person:cli-ent"))
    res = node.cli("facts", "erase", one["id"], "--reason", "legal")
    assert res.returncode == 0 and one["id"] in res.stdout and "legal" in res.stdout, res.stderr
    res = node.cli("facts", "erase", "--entity", "person:cli-ent", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["facts_erased"] == 1
    assert node.client().get(f"/v1/facts/{two['id']}").status_code == 410

    for args, code in ((("facts", "erase"), 2), (("facts", "erase", "x", "--entity", "e"), 2),
                       (("facts", "erase", "x", "--reason", "because"), 2),
                       (("facts", "erase", "no-such-fact"), 1)):
        res = node.cli(*args)
        assert res.returncode == code, (args, res.returncode, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "fact_not_found" in node.cli("facts", "erase", "no-such-fact").stderr
    actors = [r[1] for r in audit_rows(node) if r[0] == "fact_erased"]
    assert len(actors) == 2 and all(a.startswith("cli:") for a in actors)


def test_tombstones_are_re_signed_with_the_new_key_after_a_rotation(node: ServedNode):
    from datetime import timedelta

    (one,) = post(node, fact("person:rotated"))
    assert node.client().delete(f"/v1/facts/{one['id']}").status_code == 200
    node.node.rotate_key(timedelta(seconds=0), actor="test")
    new_key = public_key_from_b64(node.well_known()["federation_pubkey"])
    (sig,) = node.sql("SELECT origin_sig FROM tombstones")[0]
    tomb = node.client().post(ERASE_PATH, json={"fact_id": one["id"]}).json()
    assert tomb["created"] is False and tomb["origin_sig"] == sig
    wire = {k: tomb[k] for k in ("kind", "fact_id", "entity", "cid", "erased_at", "origin_node_id", "reason",
                                 "origin_sig")}
    assert verify_tombstone(new_key, tombstone_from_wire(wire))
