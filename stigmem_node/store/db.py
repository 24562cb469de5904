"""What both storage engines share: the ``Database`` interface, its errors, schema versions.

A node stores its state in SQLite (``store.sqlite``, the zero-config default) or in
PostgreSQL (``store.postgres``, for several replicas of one node).  Repositories write
their SQL once, in the subset both engines run (``?`` placeholders, ``ON CONFLICT``,
``IS NOT DISTINCT FROM``, ``RETURNING``); the few expressions that differ come from the
engine's ``Dialect``.  Both engines:

- run every call on the calling thread and are safe to call from any thread, but refuse a
  call from a thread that runs an asyncio event loop (``off_loop``): storage waits (on
  locks, on the disk, on the network), and the loop must never wait;
- serialise write transactions node-wide (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an
  advisory lock taken at ``BEGIN``), so that read-then-write sequences (the audit chain,
  compare-and-set of a peer's status) hold across processes, and ``seq`` values are
  handed out in commit order;
- translate driver errors into the errors below, so no layer above sees a driver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from stigmem_node.errors import ConfigError, Conflict, StigmemError

SCHEMA_VERSION = 8

# Migrations from version N-1 to N, for N > 1: SQL both engines run, or one text per engine
# (``migration_sql``) where the SQL differs (triggers).  Version 1 is the engine's schema
# file (schema.sql, schema_postgres.sql: tests/test_schema_parity.py keeps them equivalent).
MIGRATIONS: dict[int, str | dict[str, str]] = {
    # 2: nonces are kept until exp + the largest leeway any process may use + a margin
    # (tokens.nonce_kept_until), no longer until exp + the inserting process's own leeway.
    # Rows written before could have been kept for as little as exp + 0: extend them by the
    # whole new allowance (at most ten minutes too long, never too short).
    2: "UPDATE nonce_cache SET expires_at_ms = expires_at_ms + 660000;",
    # 3: erasure.  Tombstones (commit-ordered by seq, like facts), and the facts guard lets a
    # fact row be deleted only once a tombstone for its id or its entity exists: erasure is
    # the one way out of the append-only table, and it always leaves a tombstone behind.
    3: {"sqlite": """
CREATE TABLE IF NOT EXISTS tombstones (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind           TEXT NOT NULL CHECK (kind IN ('fact', 'entity')),
    fact_id        TEXT,
    entity         TEXT,
    cid            TEXT,
    scopes         TEXT NOT NULL,
    erased_at      TEXT NOT NULL,
    origin_node_id TEXT NOT NULL,
    reason         TEXT NOT NULL CHECK (reason IN ('right_to_erasure', 'legal', 'incorrect', 'operator')),
    origin_sig     TEXT,
    received_from  TEXT
);
CREATE INDEX IF NOT EXISTS tombstones_fact ON tombstones (fact_id);
CREATE INDEX IF NOT EXISTS tombstones_entity ON tombstones (entity);
CREATE TRIGGER IF NOT EXISTS tombstones_no_update BEFORE UPDATE OF seq, kind, fact_id, entity, cid, scopes,
    erased_at, origin_node_id, reason, received_from ON tombstones
BEGIN SELECT RAISE(ABORT, 'tombstones are append-only'); END;
CREATE TRIGGER IF NOT EXISTS tombstones_no_delete BEFORE DELETE ON tombstones
BEGIN SELECT RAISE(ABORT, 'tombstones are append-only'); END;
DROP TRIGGER IF EXISTS facts_no_delete;
CREATE TRIGGER facts_no_delete BEFORE DELETE ON facts
WHEN NOT EXISTS (SELECT 1 FROM tombstones WHERE (kind = 'fact' AND fact_id = OLD.id)
                                           OR (kind = 'entity' AND entity = OLD.entity))
BEGIN SELECT RAISE(ABORT, 'facts are append-only'); END;
""", "postgresql": """
CREATE SEQUENCE tombstones_seq AS BIGINT;
CREATE TABLE tombstones (
    seq            BIGINT PRIMARY KEY,
    kind           TEXT COLLATE "C" NOT NULL CHECK (kind IN ('fact', 'entity')),
    fact_id        TEXT COLLATE "C",
    entity         TEXT COLLATE "C",
    cid            TEXT COLLATE "C",
    scopes         TEXT COLLATE "C" NOT NULL,
    erased_at      TEXT COLLATE "C" NOT NULL,
    origin_node_id TEXT COLLATE "C" NOT NULL,
    reason         TEXT COLLATE "C" NOT NULL CHECK (reason IN ('right_to_erasure', 'legal', 'incorrect', 'operator')),
    origin_sig     TEXT COLLATE "C",
    received_from  TEXT COLLATE "C"
);
ALTER SEQUENCE tombstones_seq OWNED BY tombstones.seq;
CREATE INDEX tombstones_fact ON tombstones (fact_id);
CREATE INDEX tombstones_entity ON tombstones (entity);
CREATE TRIGGER tombstones_seq BEFORE INSERT ON tombstones
    FOR EACH ROW EXECUTE FUNCTION stigmem_ordered_seq('8386093285', 'tombstones_seq');
CREATE TRIGGER tombstones_no_update BEFORE UPDATE OF seq, kind, fact_id, entity, cid, scopes, erased_at,
    origin_node_id, reason, received_from ON tombstones
    FOR EACH ROW EXECUTE FUNCTION stigmem_append_only();
CREATE TRIGGER tombstones_no_delete BEFORE DELETE ON tombstones
    FOR EACH ROW EXECUTE FUNCTION stigmem_append_only();
CREATE TRIGGER tombstones_no_truncate BEFORE TRUNCATE ON tombstones
    FOR EACH STATEMENT EXECUTE FUNCTION stigmem_append_only();
CREATE FUNCTION stigmem_erasure_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM tombstones WHERE (kind = 'fact' AND fact_id = OLD.id)
                                          OR (kind = 'entity' AND entity = OLD.entity)) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'facts are append-only' USING ERRCODE = 'integrity_constraint_violation';
END
$$;
DROP TRIGGER facts_no_delete ON facts;
CREATE TRIGGER facts_no_delete BEFORE DELETE ON facts
    FOR EACH ROW EXECUTE FUNCTION stigmem_erasure_guard();
"""},
    # 4: the subscriber's tombstone cursor per peer (erasures pulled from the origin).
    4: {"sqlite": "ALTER TABLE replication_state ADD COLUMN tombstone_cursor TEXT;",
        "postgresql": 'ALTER TABLE replication_state ADD COLUMN tombstone_cursor TEXT COLLATE "C";'},
    # 5: what operators watch.  A subscriber's consecutive failures per peer; a publisher's
    # view of each peer that pulls from it (its last pull, how far it has read, the clock skew
    # of its last token); facts in and out per minute (the status page's charts).
    5: {"sqlite": """
ALTER TABLE replication_state ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS peer_pulls (
    peer_id       TEXT PRIMARY KEY REFERENCES peers(id) ON DELETE CASCADE,
    last_pull_at  TEXT NOT NULL,
    cursor_seq    INTEGER NOT NULL,
    facts_served  INTEGER NOT NULL DEFAULT 0,
    token_skew_ms INTEGER
);
CREATE TABLE IF NOT EXISTS fact_traffic (
    minute    INTEGER NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    facts     INTEGER NOT NULL,
    PRIMARY KEY (minute, direction)
);
""", "postgresql": """
ALTER TABLE replication_state ADD COLUMN consecutive_failures BIGINT NOT NULL DEFAULT 0;
CREATE TABLE peer_pulls (
    peer_id       TEXT COLLATE "C" PRIMARY KEY REFERENCES peers(id) ON DELETE CASCADE,
    last_pull_at  TEXT COLLATE "C" NOT NULL,
    cursor_seq    BIGINT NOT NULL,
    facts_served  BIGINT NOT NULL DEFAULT 0,
    token_skew_ms BIGINT
);
CREATE TABLE fact_traffic (
    minute    BIGINT NOT NULL,
    direction TEXT COLLATE "C" NOT NULL CHECK (direction IN ('in', 'out')),
    facts     BIGINT NOT NULL,
    PRIMARY KEY (minute, direction)
);
"""},
    # 6: status page sessions (``store.sessions``), shared by replicas: the SHA-256 of the
    # session id (never the id), the API key it was opened with and that key's permissions.
    6: {"sqlite": """
CREATE TABLE IF NOT EXISTS sessions (
    id_hash      TEXT PRIMARY KEY,
    key_id       TEXT NOT NULL,
    permissions  TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    seen_ms      INTEGER NOT NULL
);
""", "postgresql": """
CREATE TABLE sessions (
    id_hash      TEXT COLLATE "C" PRIMARY KEY,
    key_id       TEXT COLLATE "C" NOT NULL,
    permissions  TEXT COLLATE "C" NOT NULL,
    created_ms   BIGINT NOT NULL,
    seen_ms      BIGINT NOT NULL
);
"""},
    # 7: the ids of the facts an entity tombstone erased (ids only, never content), written
    # in the transaction that deletes their rows, so GET /v1/facts/{id} answers 410 for them
    # as for a fact erased by id.  Append-only, like tombstones.  The facts guard now lets a
    # row go only under a fact tombstone of its id, or under an entity tombstone of its
    # entity that recorded its id here: no erasure deletes a fact without leaving its id.
    7: {"sqlite": """
CREATE TABLE IF NOT EXISTS erased_facts (
    fact_id       TEXT PRIMARY KEY,
    tombstone_seq INTEGER NOT NULL REFERENCES tombstones(seq)
);
CREATE TRIGGER IF NOT EXISTS erased_facts_no_update BEFORE UPDATE ON erased_facts
BEGIN SELECT RAISE(ABORT, 'erased_facts are append-only'); END;
CREATE TRIGGER IF NOT EXISTS erased_facts_no_delete BEFORE DELETE ON erased_facts
BEGIN SELECT RAISE(ABORT, 'erased_facts are append-only'); END;
DROP TRIGGER IF EXISTS facts_no_delete;
CREATE TRIGGER facts_no_delete BEFORE DELETE ON facts
WHEN NOT EXISTS (SELECT 1 FROM tombstones WHERE kind = 'fact' AND fact_id = OLD.id)
 AND NOT EXISTS (SELECT 1 FROM erased_facts e JOIN tombstones t ON t.seq = e.tombstone_seq
                 WHERE e.fact_id = OLD.id AND t.kind = 'entity' AND t.entity = OLD.entity)
BEGIN SELECT RAISE(ABORT, 'facts are append-only'); END;
""", "postgresql": """
CREATE TABLE erased_facts (
    fact_id       TEXT COLLATE "C" PRIMARY KEY,
    tombstone_seq BIGINT NOT NULL REFERENCES tombstones(seq)
);
CREATE TRIGGER erased_facts_no_update BEFORE UPDATE ON erased_facts
    FOR EACH ROW EXECUTE FUNCTION stigmem_append_only();
CREATE TRIGGER erased_facts_no_delete BEFORE DELETE ON erased_facts
    FOR EACH ROW EXECUTE FUNCTION stigmem_append_only();
CREATE TRIGGER erased_facts_no_truncate BEFORE TRUNCATE ON erased_facts
    FOR EACH STATEMENT EXECUTE FUNCTION stigmem_append_only();
CREATE OR REPLACE FUNCTION stigmem_erasure_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM tombstones WHERE kind = 'fact' AND fact_id = OLD.id)
       OR EXISTS (SELECT 1 FROM erased_facts e JOIN tombstones t ON t.seq = e.tombstone_seq
                  WHERE e.fact_id = OLD.id AND t.kind = 'entity' AND t.entity = OLD.entity) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'facts are append-only' USING ERRCODE = 'integrity_constraint_violation';
END
$$;
"""},
    # 8: one index for looking a fact up by its content, clustered by entity: (entity,
    # relation, cid) replaces facts_entity (entity, relation), which it serves as well, and
    # facts_cid (cid).  The CID is a hash: an index keyed by it alone dirtied a random page of
    # its own for nearly every fact a batch stored, and wrote it at every commit.
    8: """
CREATE INDEX IF NOT EXISTS facts_content ON facts (entity, relation, cid);
DROP INDEX IF EXISTS facts_cid;
DROP INDEX IF EXISTS facts_entity;
""",
}


def migration_sql(version: int, engine: str) -> str:
    """The SQL that migrates ``engine``'s schema from ``version - 1`` to ``version``."""
    sql = MIGRATIONS[version]
    return sql if isinstance(sql, str) else sql[engine]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(target: str | Path | None) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


class StorageError(Exception):
    """Base of every error storage raises in place of a driver's."""


class StorageBusy(StorageError, StigmemError):
    """A write waited for the node-wide write lock for longer than the busy timeout."""

    code = "database_busy"

    def __init__(self, message: str = "the database is busy; retry shortly") -> None:
        super().__init__(message=message, retry_after=1)


class StorageUnavailable(StorageError, StigmemError):
    """The database cannot be reached or opened (a lost connection, a server that is down)."""

    code = "database_unavailable"

    def __init__(self, message: str = "the database is unavailable; retry shortly") -> None:
        super().__init__(message=message, retry_after=1)


class ConstraintViolation(StorageError):
    """A constraint or trigger refused a write (repositories map it to a typed conflict)."""


class StorageFailure(StorageError):
    """Any other error of the database driver: a bug, or a database in a state we never made."""


class IntegrityConflict(Conflict):
    """A uniqueness constraint refused a row (raised by repositories, mapped by callers);
    it names the code of the conflict, e.g. ``peer_already_registered``."""


@dataclass(frozen=True)
class Dialect:
    """The expressions that differ between the engines."""

    name: str
    # An expression giving a text column's bytes as lowercase hex (``{}`` is the column).
    hex_text: str
    # The largest audit ``seq`` ever handed out, even if the newest rows were deleted.
    audit_seq_issued: str
    # The rowid of the connection's last insert (None: the engine has no such thing).
    last_insert_seq: str | None = None


class HeldLock(Protocol):
    """A lock taken by ``Database.try_lock``."""

    def release(self) -> None: ...


class Queryable(Protocol):
    """What repositories run their SQL on (``?`` placeholders on both engines): a
    ``Database``, or a read-only view of one (``store.readonly``), which refuses writes."""

    engine: str
    dialect: Dialect
    target: str  # the file path or the URL without its password, for messages

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None: ...

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def iterate(self, sql: str, params: Sequence[Any] = ()) -> Generator[tuple[Any, ...], None, None]: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    def returning(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...]: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...

    def transaction(self, *, exclusive: bool = True) -> AbstractContextManager[object]:
        """A write transaction (nested: a savepoint).  ``exclusive``: take the node-wide
        write lock (PostgreSQL; SQLite always does); only writes that need no ordering,
        such as nonces, pass False."""
        ...


class Database(Queryable, Protocol):
    """A node's database (``store.sqlite.SqliteDatabase``, ``store.postgres.PostgresDatabase``)."""

    def disable_autocheckpoint(self) -> None: ...

    def checkpoint(self) -> None: ...

    def refresh_statistics(self) -> list[str]:
        """Refresh the query planner's statistics of tables that changed a lot (PostgreSQL);
        the tables refreshed."""
        ...

    def reclaim_erased(self) -> bool:
        """Make deleted (erased) rows' content unreachable: SQLite truncates the WAL after a
        checkpoint, PostgreSQL vacuums ``facts``.  Outside a transaction; False if it could
        not complete now."""
        ...

    def try_lock(self, name: str) -> HeldLock | None:
        """Take the lock ``name`` if no one holds it (release it with ``HeldLock.release``),
        else None at once.  On PostgreSQL it holds across every replica and ends with its
        holder's connection, so a replica that dies never keeps it."""
        ...

    def backup_to(self, path: Path, *, overwrite: bool = False) -> int:
        """An online, consistent copy of the whole database in the file ``path`` (mode 0600),
        taken while the node serves; its size in bytes.  SQLite only: PostgreSQL refuses
        (``ConfigError`` ``backup_unsupported``: use ``pg_dump``)."""
        ...


ON_LOOP = "storage called on the event loop thread"


def off_loop() -> None:
    """Refuse a storage call from a thread that runs an asyncio event loop: it would block
    every request of that loop (it belongs in a lane, ``stigmem_node.offload``)."""
    if asyncio._get_running_loop() is not None:
        raise RuntimeError(ON_LOOP)


def schema_text(engine: str = "sqlite") -> str:
    """The engine's schema shipped inside the package, or the repository's own in a checkout."""
    name = "schema.sql" if engine == "sqlite" else "schema_postgres.sql"
    packaged = resources.files("stigmem_node").joinpath(name)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    source = Path(__file__).resolve().parents[2] / name
    if source.is_file():
        return source.read_text(encoding="utf-8")
    raise ConfigError("schema_missing", f"{name} is missing from the installation")


def split_sql(script: str, complete: Callable[[str], bool]) -> list[str]:
    """Split a schema script into statements: a statement ends at a line ending in ``;``
    where ``complete`` says the text so far is a whole statement (SQLite triggers and
    PostgreSQL functions hold inner semicolons)."""
    statements: list[str] = []
    buf: list[str] = []
    for line in script.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("--")):
            continue
        buf.append(line)
        text = "\n".join(buf)
        if stripped.endswith(";") and complete(text):
            statements.append(text)
            buf = []
    if "\n".join(buf).strip():
        statements.append("\n".join(buf))
    return statements
