"""Schema 7 on a node that ran schema 6: ``erased_facts`` (the ids an entity tombstone erased)
and the guard that requires them arrive with the upgrade, on both engines, and the node's facts,
tombstones and audit trail stay as they were.  Ids erased with an entity under schema 6 were
never recorded: they still answer 404 (docs/operating.md); erasures after the upgrade answer 410."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from stigmem_node.store.db import SCHEMA_VERSION, migration_sql, split_sql
from tests.engines import SqlError, connect, is_postgres
from tests.nodes import ServedNode

ERASE_PATH = "/v1/tombstones"


def _post(n: ServedNode, *entities: str) -> list[dict]:
    facts = [{"entity": e, "relation": "rel", "value": {"type": "string", "v": f"v{i}"}, "source": "test",
              "scope": "company"} for i, e in enumerate(entities)]
    res = n.client().post("/v1/facts", json={"facts": facts})
    assert res.status_code in (200, 201), res.text
    return res.json()["facts"]


def _schema_6_guard(engine: str) -> list[str]:
    """The facts guard as migration 3 wrote it (what a schema-6 database holds)."""
    if engine == "sqlite":
        statements = split_sql(migration_sql(3, engine), sqlite3.complete_statement)
    else:
        statements = split_sql(migration_sql(3, engine), lambda text: text.count("$$") % 2 == 0)
    guard = [s for s in statements if "facts_no_delete" in s or "stigmem_erasure_guard()" in s]
    return [s.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION") for s in guard]


def back_to_schema_6(target: Path | str) -> None:
    """Make a stopped node's database what schema 6 left: no erased_facts, the old guard, the
    old fact indexes.  It undoes migrations 8 and 7: a later migration must be undone here too."""
    assert SCHEMA_VERSION == 8, "undo the migrations after 8 here first"
    engine = "postgresql" if is_postgres(target) else "sqlite"
    with connect(target) as conn:
        conn.execute("CREATE INDEX facts_entity ON facts (entity, relation)")
        conn.execute("CREATE INDEX facts_cid ON facts (cid)")
        conn.execute("DROP INDEX facts_content")
        conn.execute("DROP TABLE erased_facts")
        for statement in _schema_6_guard(engine):
            conn.execute(statement)
        if engine == "sqlite":
            conn.execute("PRAGMA user_version=6")
        else:
            conn.execute("UPDATE stigmem_schema SET version = 6")


def _version(n: ServedNode) -> int:
    query = "PRAGMA user_version" if n.engine == "sqlite" else "SELECT version FROM stigmem_schema"
    return int(n.sql(query)[0][0])


def test_a_schema_6_node_upgrades_and_its_later_entity_erasures_answer_410(start_node):
    a = start_node("a")
    kept, old1, old2, new1 = _post(a, "ex:kept", "person:old", "person:old", "person:new")
    with a.client() as c:
        assert c.post(ERASE_PATH, json={"entity": "person:old"}).json()["facts_erased"] == 2
    a.stop()
    back_to_schema_6(a.target)  # as if person:old had been erased by a schema-6 node
    assert _version(a) == 6
    before = {table: a.sql(f"SELECT COUNT(*) FROM {table}")[0][0] for table in ("facts", "tombstones")}

    a2 = start_node("a")  # the same database, opened by this version: migration 7 runs
    assert _version(a2) == SCHEMA_VERSION
    assert a2.sql("SELECT COUNT(*) FROM erased_facts") == [(0,)]
    for table, count in before.items():
        assert a2.sql(f"SELECT COUNT(*) FROM {table}")[0][0] == count, table
    assert "intact" in a2.cli("audit", "verify").stdout

    key = a2.cli_json("apikey", "create", "--permissions", "all")["key"]
    with a2.client(key) as c:
        assert c.get(f"/v1/facts/{kept['id']}").status_code == 200
        for gone in (old1, old2):  # erased with their entity before the upgrade: ids never recorded
            assert c.get(f"/v1/facts/{gone['id']}").json()["error"] == "fact_not_found"
        res = c.post(ERASE_PATH, json={"entity": "person:new"})
        assert res.status_code == 201 and res.json()["facts_erased"] == 1
        res = c.get(f"/v1/facts/{new1['id']}")
        assert (res.status_code, res.json()["error"]) == (410, "fact_erased")
        assert c.get(f"/v1/facts/{uuid.uuid4()}").status_code == 404
    assert a2.sql("SELECT fact_id FROM erased_facts") == [(new1["id"],)]

    # The upgraded guard: under the old entity tombstone, a row whose id is not recorded stays.
    later = a2.cli_json("facts", "add", "person:old", "rel", "later")
    with pytest.raises(SqlError):
        a2.sql("DELETE FROM facts WHERE id = ?", (later["id"],))
