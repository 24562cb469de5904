"""The PostgreSQL engine: a connection pool shared by the threads of one process, one
database shared by every replica of a node.

- **Reads** outside a transaction take a pooled connection for one statement (autocommit),
  and never wait for a writer.
- **Write transactions** keep one pooled connection for their thread and take the node-wide
  write lock first: a transaction-scoped advisory lock (``WRITE_LOCK``), released by
  COMMIT or ROLLBACK, or by the server when the connection dies.  So read-then-write
  sequences (the audit chain, compare-and-set of a peer's status, the first identity) are
  serialised across every replica exactly as SQLite's ``BEGIN IMMEDIATE`` serialises them
  across processes.  ``transaction(exclusive=False)`` skips the lock for writes that need
  no ordering (single-use nonces: their primary key makes a replay fail in any replica).
- **seq** of facts and audit rows is drawn under the same lock by a trigger
  (schema_postgres.sql), so seq order is commit order: a pull never skips a fact that
  committed late with a smaller seq.
- A write waits at most ``busy_timeout_ms`` for the lock or a pooled connection
  (``StorageBusy``); a database that cannot be reached gives ``StorageUnavailable``.

The schema version lives in the table ``stigmem_schema``; the schema and the numbered
migrations are applied under an advisory lock, so replicas starting together migrate once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from stigmem_node.errors import ConfigError
from stigmem_node.store.db import (
    SCHEMA_VERSION,
    ConstraintViolation,
    Dialect,
    StorageBusy,
    StorageFailure,
    StorageUnavailable,
    migration_sql,
    off_loop,
    schema_text,
    split_sql,
)
from stigmem_node.store.postgres_leases import Lease, Leases

try:
    import psycopg
    import psycopg.errors
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError:  # pragma: no cover - the postgresql extra is not installed
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger("stigmem_node.store")

WRITE_LOCK = 8386093285  # the node-wide write lock (also in schema_postgres.sql)
MIGRATE_LOCK = 8386093286
WARM_CONNECTIONS = 4
# Rows a streamed result arrives in per message: each message costs a Python round of
# psycopg's loop, a row each made a 10-row page cost more than the query.  libpq before 17 has
# no chunked mode: one row a message there.
STREAM_CHUNK_ROWS = 16 if psycopg.pq.version() >= 170000 else 1
DIALECT = Dialect(
    name="postgresql",
    hex_text="encode(convert_to({}, 'UTF8'), 'hex')",
    audit_seq_issued="SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM audit_log_seq",
)


_ANALYZABLE = frozenset({"facts", "tombstones", "erased_facts", "audit_log", "nonce_cache", "peers", "peer_keys",
                         "api_keys", "replication_state", "node_meta", "node_keys"})


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[1]}"))


@lru_cache(maxsize=1024)
def _sql(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (and a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _has_nul(params: Sequence[Any]) -> bool:
    return any(isinstance(p, str) and "\x00" in p for p in params)


def _split_complete(text: str) -> bool:
    return text.count("$$") % 2 == 0


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, psycopg.errors.IntegrityError):
        return ConstraintViolation(str(exc).splitlines()[0])
    if isinstance(exc, psycopg.errors.LockNotAvailable | PoolTimeout | psycopg.errors.QueryCanceled):
        return StorageBusy()
    if isinstance(exc, psycopg.OperationalError):
        return StorageUnavailable(f"the database is unavailable ({str(exc).splitlines()[0][:200]})")
    return StorageFailure(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


class _Tx:
    """The write transaction of one thread: its connection and nesting depth."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.depth = 0


class PostgresDatabase:
    engine = "postgresql"
    dialect = DIALECT

    def __init__(self, url: str, busy_timeout_ms: int = 10_000, *, create: bool = True, pool_size: int = 20,
                 connect_timeout_s: float = 10.0) -> None:
        if psycopg is None:
            raise ConfigError("postgresql_unsupported",
                              "PostgreSQL needs the postgresql extra: pip install 'stigmem-node[postgresql]'")
        self.url = url
        self.target = redact(url)
        self.busy_timeout_ms = int(busy_timeout_ms)
        self.busy_timeout_s = busy_timeout_ms / 1000
        self._local = threading.local()
        self._unreachable = False
        lock_timeout = f"{int(busy_timeout_ms)}ms"

        def configure(conn: Any) -> None:
            conn.execute(f"SET lock_timeout = '{lock_timeout}'")
            conn.execute("SET idle_in_transaction_session_timeout = '60s'")

        self.pool = ConnectionPool(
            # A few connections kept open and ready: a read must not wait for a new backend to
            # start (tens to hundreds of ms on a loaded machine) while writers hold the others.
            url, min_size=min(WARM_CONNECTIONS, pool_size), max_size=pool_size, open=False,
            timeout=self.busy_timeout_s,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout_s)),
                    "application_name": f"stigmem-node:{os.getpid()}"},
            configure=configure, name="stigmem",
        )
        try:
            self.pool.open(wait=True, timeout=connect_timeout_s)
        except (PoolTimeout, psycopg.Error) as exc:
            self.pool.close()
            raise ConfigError("database_unavailable", f"cannot connect to {self.target}: {exc}") from None
        try:
            self._migrate(create)
        except BaseException:
            self.pool.close()
            raise
        self._leases = Leases(
            lambda: psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(connect_timeout_s)),
                                    application_name=f"stigmem-node:{os.getpid()}:leases"),
            (psycopg.Error,), _translate)

    # -- schema ----------------------------------------------------------------------------
    def _migrate(self, create: bool) -> None:
        try:
            with self.pool.connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
                tables = {r[0] for r in conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}
                if "stigmem_schema" not in tables:
                    if tables:
                        raise ConfigError("not_a_stigmem_database",
                                          f"{self.target} holds other tables and no stigmem schema: "
                                          "use an empty database of its own")
                    if not create:
                        raise ConfigError("not_a_stigmem_database",
                                          f"{self.target} has no stigmem schema yet "
                                          "(only init or serve creates a node)")
                    conn.execute("CREATE TABLE stigmem_schema (version INTEGER NOT NULL)")
                    conn.execute("REVOKE ALL ON stigmem_schema FROM PUBLIC")
                    conn.execute("INSERT INTO stigmem_schema (version) VALUES (0)")
                row = conn.execute("SELECT version FROM stigmem_schema").fetchone()
                version = int(row[0]) if row else 0
                if version > SCHEMA_VERSION:
                    raise ConfigError("schema_too_new", f"database schema version {version} is newer than "
                                      f"this node understands ({SCHEMA_VERSION})")
                if version == SCHEMA_VERSION:
                    return
                if version == 0:
                    for statement in split_sql(schema_text("postgresql"), _split_complete):
                        conn.execute(statement)
                    version = 1
                while version < SCHEMA_VERSION:
                    version += 1
                    for statement in split_sql(migration_sql(version, 'postgresql'), _split_complete):
                        conn.execute(statement)
                conn.execute("UPDATE stigmem_schema SET version = %s", (version,))
        except psycopg.Error as exc:
            raise ConfigError("database_unavailable", f"{self.target} is not a usable stigmem database: "
                              f"{str(exc).splitlines()[0]}") from None

    def is_empty(self) -> bool:
        """No node in it yet: no identity, peer, fact, audit row or API key."""
        for table in ("node_meta", "node_keys", "peers", "facts", "tombstones", "audit_log", "api_keys", "nonce_cache"):
            if self.one(f"SELECT 1 FROM {table} LIMIT 1") is not None:
                return False
        return True

    # -- connections -----------------------------------------------------------------------
    def _getconn(self) -> Any:
        """A pooled connection, waited for at most the busy timeout: ``StorageBusy`` when
        every connection is in use, ``StorageUnavailable`` when the pool has none because
        the server refuses or cannot be reached (then later calls give up after a second,
        until a connection succeeds again)."""
        try:
            conn = self.pool.getconn(timeout=1.0 if self._unreachable else self.busy_timeout_s)
        except PoolTimeout:
            if not self._reachable():
                self._unreachable = True
                raise StorageUnavailable("the database cannot be reached") from None
            raise StorageBusy() from None
        except psycopg.Error as exc:
            raise _translate(exc) from None
        self._unreachable = False
        return conn

    def _reachable(self) -> bool:
        """Whether a new connection can be made now (asked only when the pool had none to
        give within the timeout: every connection busy, or none to be had)."""
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    # -- transactions ----------------------------------------------------------------------
    def _tx(self) -> _Tx | None:
        tx: _Tx | None = getattr(self._local, "tx", None)
        return tx

    @contextmanager
    def transaction(self, *, exclusive: bool = True) -> Iterator[Any]:
        """A write transaction; nested calls are savepoints.  ``exclusive`` (the default)
        takes the node-wide write lock at BEGIN."""
        off_loop()
        tx = self._tx()
        if tx is not None:
            yield from self._savepoint(tx)
            return
        conn = self._getconn()
        tx = _Tx(conn)
        broken = False
        try:
            try:
                conn.execute("BEGIN")
                if exclusive:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            except psycopg.Error as exc:
                # A lock wait that timed out leaves a healthy connection: roll back and keep it.
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    broken = True
                raise _translate(exc) from None
            self._local.tx = tx
            tx.depth = 1
            try:
                yield conn
            except BaseException:
                self._local.tx = None
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    broken = True
                raise
            self._local.tx = None
            try:
                conn.execute("COMMIT")
            except psycopg.Error as exc:
                broken = True
                raise _translate(exc) from None
        finally:
            self._local.tx = None
            if broken:
                conn.close()
            self.pool.putconn(conn)

    def _savepoint(self, tx: _Tx) -> Iterator[Any]:
        name = f"sp{tx.depth}"
        tx.conn.execute(f"SAVEPOINT {name}")
        tx.depth += 1
        try:
            yield tx.conn
        except BaseException:
            tx.depth -= 1
            tx.conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
            tx.conn.execute(f"RELEASE SAVEPOINT {name}")
            raise
        tx.depth -= 1
        tx.conn.execute(f"RELEASE SAVEPOINT {name}")

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        """The thread's transaction connection, or a pooled one for one statement."""
        tx = self._tx()
        if tx is not None:
            yield tx.conn
            return
        conn = self._getconn()
        try:
            yield conn
        except psycopg.OperationalError as exc:
            raise _translate(exc) from None
        finally:
            self.pool.putconn(conn)

    def _run(self, sql: str, params: Sequence[Any], fetch: str) -> Any:
        off_loop()
        if fetch != "rowcount" and _has_nul(params) and sql.lstrip()[:6].upper() == "SELECT":
            # PostgreSQL text cannot hold NUL, so no stored value equals one that has it:
            # a lookup by such a value finds nothing, as it finds nothing on SQLite.
            return [] if fetch == "all" else None
        # A read outside a transaction is tried again on another connection when the one it
        # got turns out dead (a failover or a restart kills every pooled connection at once).
        # A write never is: it may have committed before the connection died.
        read = fetch != "rowcount" and sql.lstrip()[:6].upper() in ("SELECT", "WITH")
        attempts = WARM_CONNECTIONS + 1 if read and self._tx() is None else 1
        for attempt in range(attempts):
            try:
                with self._conn() as conn:
                    cur = conn.execute(_sql(sql), tuple(params) if params else None)
                    if fetch == "all":
                        return cur.fetchall()
                    if fetch == "one":
                        return cur.fetchone()
                    return cur.rowcount
            except StorageUnavailable:
                if self._unreachable or attempt == attempts - 1:  # no connection to be had: no retry
                    raise
            except psycopg.Error as exc:
                raise _translate(exc) from None
        raise StorageUnavailable()  # pragma: no cover - the loop returns or raises

    # -- statements --------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        rowcount: int = self._run(sql, params, "rowcount")
        return rowcount

    def returning(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
        row: tuple[Any, ...] = self._run(sql, params, "one")
        return row

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        off_loop()
        if not rows:
            return
        try:
            with self._conn() as conn, conn.cursor() as cur:
                cur.executemany(_sql(sql), [tuple(r) for r in rows])
        except psycopg.Error as exc:
            raise _translate(exc) from None

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._run(sql, params, "all")
        return rows

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._run(sql, params, "one")
        return row

    def iterate(self, sql: str, params: Sequence[Any] = ()) -> Generator[tuple[Any, ...], None, None]:
        """Rows one at a time, streamed from the server in chunks of ``STREAM_CHUNK_ROWS``
        (libpq 17 and later; one row a message before), so that memory holds a chunk, never
        the whole result, and a short result costs about one message."""
        off_loop()
        if _has_nul(params):
            return
        try:
            with self._conn() as conn, conn.cursor() as cur:
                yield from cur.stream(_sql(sql), tuple(params) if params else None, size=STREAM_CHUNK_ROWS)
        except psycopg.Error as exc:
            raise _translate(exc) from None

    def ping(self) -> None:
        self.one("SELECT 1 FROM node_meta LIMIT 1")

    # -- locks -----------------------------------------------------------------------------
    def try_lock(self, name: str) -> Lease | None:
        """A lease named ``name`` (a session advisory lock on this process's lease
        connection, ``postgres_leases``) until ``release``: None if another process or
        thread holds it.  The server releases it when the connection dies, so a crashed
        replica never keeps it."""
        off_loop()
        return self._leases.try_lock(name)

    # -- upkeep ------------------------------------------------------------------------------
    def refresh_statistics(self) -> list[str]:
        """ANALYZE the tables changed by more than a tenth (and 500 rows) since their last
        analysis; the tables analysed.  Without statistics, the planner takes a freshly
        loaded ``facts`` for nearly empty, and answers a page by sorting the whole table
        instead of walking the ``seq`` index (20 ms instead of 0.1 ms for 10,000 facts);
        autovacuum catches up only after a minute or more."""
        stale = [r[0] for r in self.all(
            "SELECT relname FROM pg_stat_user_tables WHERE schemaname = current_schema()"
            " AND n_mod_since_analyze > 500 AND n_mod_since_analyze > n_live_tup / 10")]
        for table in stale:
            if table in _ANALYZABLE:
                self.execute(f"ANALYZE {table}")
        return [t for t in stale if t in _ANALYZABLE]

    def disable_autocheckpoint(self) -> None:
        """Nothing to do: PostgreSQL checkpoints on its own."""

    def checkpoint(self) -> None:
        """Nothing to do: PostgreSQL checkpoints on its own."""

    def reclaim_erased(self) -> bool:
        """After an erasure: VACUUM ``facts`` (its TOAST table and indexes too), so that the
        deleted rows' dead tuples are removed and their space is free for reuse.  Their bytes
        may remain in free space of the data files until reused, in old ``pg_statistic`` rows
        (samples of an earlier ANALYZE), in WAL segments until they are recycled, and in
        backups (docs/security.md).  False if it could not run."""
        try:
            self.execute("VACUUM (ANALYZE) facts")
        except StorageBusy:
            return False
        return True

    def backup_to(self, path: Path, *, overwrite: bool = False) -> int:
        """Refused: a PostgreSQL node is backed up with PostgreSQL's own tools."""
        raise ConfigError("backup_unsupported", "backup copies a SQLite node; back up a PostgreSQL node with "
                          "pg_dump --format=custom (restore with pg_restore), with the API key pepper")

    def close(self) -> None:
        self._leases.close()
        self.pool.close()

