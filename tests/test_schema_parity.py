"""schema.sql (SQLite) and schema_postgres.sql (PostgreSQL) describe one schema: the same
tables, columns in the same order, the same NOT NULL columns, primary keys, unique
columns and indexes; and both engines run the same numbered migrations to the same version."""

from __future__ import annotations

from pathlib import Path

import pytest

from stigmem_node.store import Store
from stigmem_node.store.db import SCHEMA_VERSION

psycopg = pytest.importorskip("psycopg")

_TYPES = {"TEXT": "text", "INTEGER": "integer", "REAL": "real", "BIGINT": "integer", "DOUBLE PRECISION": "real"}


def _sqlite_shape(path: Path) -> dict:
    store = Store(path)
    try:
        db = store.db
        tables = [r[0] for r in db.all("SELECT name FROM sqlite_master WHERE type = 'table' "
                                       "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        shape = {}
        for t in tables:
            cols = db.all(f"PRAGMA table_info({t})")
            pk = [c[1] for c in sorted(cols, key=lambda c: c[5]) if c[5]]
            uniques = sorted(
                tuple(r[2] for r in db.all(f"PRAGMA index_info({ix[1]})"))
                for ix in db.all(f"PRAGMA index_list({t})") if ix[2] and ix[3] == "u")
            indexes = sorted(ix[1] for ix in db.all(f"PRAGMA index_list({t})") if ix[3] == "c")
            shape[t] = {"columns": [(c[1], _TYPES[c[2].upper()], bool(c[3]) or bool(c[5])) for c in cols],
                        "pk": pk, "unique": uniques, "indexes": indexes}
        return shape
    finally:
        store.close()


def _pg_shape(url: str) -> dict:
    Store(url).close()
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                             "AND tablename <> 'stigmem_schema' ORDER BY tablename")]
        shape = {}
        for t in tables:
            cols = conn.execute("SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                                "WHERE table_name = %s ORDER BY ordinal_position", (t,)).fetchall()
            pk = [r[0] for r in conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary "
                "ORDER BY array_position(i.indkey, a.attnum)", (t,))]
            uniques = sorted(tuple(r[0]) for r in conn.execute(
                "SELECT array_agg(a.attname ORDER BY array_position(i.indkey, a.attnum)) FROM pg_index i "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                "WHERE i.indrelid = %s::regclass AND i.indisunique AND NOT i.indisprimary GROUP BY i.indexrelid",
                (t,)))
            indexes = sorted(r[0] for r in conn.execute(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = %s::regclass AND NOT i.indisunique", (t,)))
            shape[t] = {"columns": [(c[0], _TYPES[c[1].upper()], c[2] == "NO") for c in cols],
                        "pk": pk, "unique": uniques, "indexes": indexes}
        return shape


@pytest.mark.postgres_only
def test_both_schemas_describe_the_same_tables(tmp_path: Path, engine):
    pg = _pg_shape(engine.url("pg", empty=True))
    lite = _sqlite_shape(tmp_path / "n.db")
    assert sorted(pg) == sorted(lite)
    for table in lite:
        assert pg[table] == lite[table], table


@pytest.mark.postgres_only
def test_postgres_text_compares_as_sqlite_does(engine):
    """Byte order ("C" collation) on every text column, whatever the database's default, so
    that times, cursors and ids sort and compare as on SQLite."""
    url = engine.url("pg", empty=True)
    Store(url).close()
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT table_name, column_name, collation_name FROM information_schema.columns "
                            "WHERE table_schema = 'public' AND data_type = 'text' "
                            "AND table_name <> 'stigmem_schema'").fetchall()
    assert rows and {r[2] for r in rows} == {"C"}, [r for r in rows if r[2] != "C"]


@pytest.mark.postgres_only
def test_both_engines_reach_the_same_version(tmp_path: Path, engine):
    store = Store(tmp_path / "n.db")
    try:
        assert store.db.one("PRAGMA user_version") == (SCHEMA_VERSION,)
    finally:
        store.close()
    store = Store(engine.url("pg", empty=True))
    try:
        assert store.db.one("SELECT version FROM stigmem_schema") == (SCHEMA_VERSION,)
    finally:
        store.close()
