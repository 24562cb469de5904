"""The SQLite database: file creation (0600), pragmas, schema versions, transactions."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import Generator, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from stigmem_node.errors import ConfigError, Conflict, StigmemError
from stigmem_node.store import files

log = logging.getLogger("stigmem_node.store")

SCHEMA_VERSION = 2

# Migrations from version N-1 to N, for N > 1.  Version 1 is schema.sql itself.
MIGRATIONS: dict[int, str] = {
    # 2: nonces are kept until exp + the largest leeway any process may use + a margin
    # (tokens.nonce_kept_until), no longer until exp + the inserting process's own leeway.
    # Rows written before could have been kept for as little as exp + 0: extend them by the
    # whole new allowance (at most ten minutes too long, never too short).
    2: "UPDATE nonce_cache SET expires_at_ms = expires_at_ms + 660000;",
}


class Queryable(Protocol):
    """What a repository runs its SQL on: a ``Database``, or a ``readonly.ReadOnlyDatabase``
    for the checks that only read (SQLite refuses a write on its read-only connection)."""

    path: Path

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None: ...

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor: ...

    def transaction(self) -> AbstractContextManager[object]: ...


class StorageBusy(StigmemError):
    """Another connection held the database's write lock for longer than the busy timeout."""

    code = "database_busy"


class StorageUnavailable(StigmemError):
    """The database cannot be reached or read (gone, replaced, unreadable)."""

    code = "database_unavailable"


ON_LOOP = "storage called on the event loop thread"


def _off_loop() -> None:
    """Refuse to run storage work on a thread that runs an asyncio event loop: it would
    block every request of that loop (it belongs in a lane, ``stigmem_node.offload``)."""
    if asyncio._get_running_loop() is not None:
        raise RuntimeError(ON_LOOP)


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class IntegrityConflict(Conflict):
    """A uniqueness constraint refused a row (raised by repositories, mapped by callers);
    it names the code of the conflict, e.g. ``peer_already_registered``."""


def schema_text() -> str:
    """The schema shipped inside the package, or the repository's own in a source checkout."""
    packaged = resources.files("stigmem_node").joinpath("schema.sql")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    source = Path(__file__).resolve().parents[2] / "schema.sql"
    if source.is_file():
        return source.read_text(encoding="utf-8")
    raise ConfigError("schema_missing", "schema.sql is missing from the installation")


def _create_private_file(path: Path) -> None:
    """Create the database file with mode 0600 if it does not exist yet."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class Database:
    """A SQLite database in WAL mode: one write connection, and one read connection per
    thread that reads outside a transaction.  Thread-safe; never called on a thread that
    runs an event loop (``RuntimeError``).

    ``transaction()`` opens ``BEGIN IMMEDIATE`` (the write lock up front, so that
    read-then-write sequences such as the audit chain are serialised across processes)
    and nests as savepoints.  Reads of the thread that holds the transaction see its
    writes; reads of other threads go through their own connection, so they never wait
    for a writer (in this process or another) that waits for the write lock.
    """

    def __init__(self, path: Path | str, synchronous: str = "NORMAL", busy_timeout_ms: int = 10_000, *,
                 create: bool = True) -> None:
        """``create``: make the file and the schema where there is none (a missing or empty
        file).  Either way, a file that is not a stigmem database is refused before anything
        is written to it (``files.inspect``), and the database and its ``-wal``/``-shm``
        files are made private (0600) before SQLite opens them."""
        _off_loop()
        self.path = Path(path)
        self.busy_timeout_ms = int(busy_timeout_ms)
        state = files.inspect(self.path, schema_version=SCHEMA_VERSION)
        if not create and state == files.MISSING:
            raise ConfigError("database_missing", f"no node database at {self.path}")
        if not create and state == files.EMPTY:
            raise ConfigError("not_a_stigmem_database",
                              f"{self.path} is not a usable stigmem database: it is empty "
                              "(only init or serve creates a node)")
        try:
            if state == files.MISSING:
                _create_private_file(self.path)
            files.make_database_private(self.path)
            self.conn = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
            )
            self._identity = _file_identity(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError("database_unavailable", f"cannot open database {self.path}: {exc}") from None
        self._lock = threading.RLock()
        self._depth = 0
        self._owner: int | None = None  # the thread that holds the open transaction
        self._local = threading.local()
        self._readers: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
            self.conn.execute("PRAGMA foreign_keys=ON")
            # After a checkpoint, the WAL file shrinks back to at most this size.
            self.conn.execute("PRAGMA journal_size_limit=67108864")
            self.conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise ConfigError("database_unavailable", f"{self.path} is not a usable stigmem database: {exc}") from None

    def _migrate(self) -> None:
        with self.transaction():
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    "schema_too_new",
                    f"database schema version {version} is newer than this node understands ({SCHEMA_VERSION})",
                )
            if version == SCHEMA_VERSION:
                return  # up to date: nothing to write
            if version == 0:
                for statement in _split_sql(schema_text()):
                    self.conn.execute(statement)
                version = 1
            while version < SCHEMA_VERSION:
                version += 1
                for statement in _split_sql(MIGRATIONS[version]):
                    self.conn.execute(statement)
            self.conn.execute(f"PRAGMA user_version={version}")

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        """The write connection, waited for at most the busy timeout (``StorageBusy``)."""
        if not self._lock.acquire(timeout=self.busy_timeout_ms / 1000):
            raise StorageBusy(message="the database is busy; retry shortly")
        try:
            yield
        finally:
            self._lock.release()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        _off_loop()
        with self._write_lock():
            if self._depth == 0:
                self._run("BEGIN IMMEDIATE")
                self._owner = threading.get_ident()
            else:
                self.conn.execute(f"SAVEPOINT sp{self._depth}")
            self._depth += 1
            try:
                yield self.conn
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None
                    self.conn.execute("ROLLBACK")
                else:
                    self.conn.execute(f"ROLLBACK TO sp{self._depth}")
                    self.conn.execute(f"RELEASE sp{self._depth}")
                raise
            else:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None
                    try:
                        self._run("COMMIT")
                    except BaseException:
                        with suppress(sqlite3.Error):
                            self.conn.execute("ROLLBACK")
                        raise
                else:
                    self.conn.execute(f"RELEASE sp{self._depth}")

    def _run(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                raise StorageBusy(message="the database is busy; retry shortly") from None
            raise

    def _reader(self) -> sqlite3.Connection | None:
        """This thread's read connection, or None when this thread holds the transaction
        (its reads must see its own writes: they go through the write connection)."""
        if self._owner == threading.get_ident():
            return None
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:  # mode=rw: never create a file where the database was removed
                conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=rw", uri=True, isolation_level=None,
                                       check_same_thread=False, timeout=self.busy_timeout_ms / 1000)
            except sqlite3.Error as exc:
                raise StorageUnavailable(message=f"the database cannot be opened ({exc})") from None
            conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
            conn.execute("PRAGMA query_only=ON")
            with self._readers_lock:
                if self._closed:
                    conn.close()
                    raise StorageUnavailable(message="the database is closed")
                # Connections of threads that ended are closed here (worker threads come and go).
                for thread, old in [r for r in self._readers if not r[0].is_alive()]:
                    old.close()
                    self._readers.remove((thread, old))
                self._readers.append((threading.current_thread(), conn))
            self._local.conn = conn
        return conn

    def _read(self, sql: str, params: Sequence[Any], many: bool) -> Any:
        conn = self._reader()
        if conn is None:
            with self._lock:
                cur = self.conn.execute(sql, params)
                return cur.fetchall() if many else cur.fetchone()
        try:
            cur = conn.execute(sql, params)
            return cur.fetchall() if many else cur.fetchone()
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                raise StorageBusy(message="the database is busy; retry shortly") from None
            raise

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        _off_loop()
        with self._write_lock():
            return self._run(sql, params)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        _off_loop()
        rows: list[tuple[Any, ...]] = self._read(sql, params, True)
        return rows

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        _off_loop()
        row: tuple[Any, ...] | None = self._read(sql, params, False)
        return row

    def iterate(self, sql: str, params: Sequence[Any] = ()) -> Generator[tuple[Any, ...], None, None]:
        """The rows of a query one by one (a read, as ``all``), for results too large to
        hold whole.  Close the generator when done early: its read ends then."""
        _off_loop()
        conn = self._reader()
        with self._lock if conn is None else nullcontext():
            cur = (conn or self.conn).execute(sql, params)
            try:
                yield from cur
            finally:
                cur.close()

    def ping(self) -> None:
        """A trivial read: ``StorageUnavailable`` if the database cannot be read, or its file
        is gone or was replaced since it was opened (this process would write into a file
        nobody else sees)."""
        _off_loop()
        try:
            if _file_identity(self.path) != self._identity:
                raise StorageUnavailable(message=f"the database file {self.path} was removed or replaced")
            self.one("SELECT 1 FROM node_meta LIMIT 1")
        except (OSError, sqlite3.Error) as exc:
            raise StorageUnavailable(message=f"the database cannot be read ({type(exc).__name__})") from None

    def disable_autocheckpoint(self) -> None:
        """Stop this connection from checkpointing the WAL when it commits (a serving node's
        connection: its checkpoints are run elsewhere, by ``checkpoint``)."""
        self.execute("PRAGMA wal_autocheckpoint=0")

    def checkpoint(self) -> None:
        """Move WAL pages into the database file: a PASSIVE checkpoint, which never blocks
        readers or writers (``StorageBusy`` if it cannot start)."""
        self.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        _off_loop()
        with self._readers_lock:
            self._closed = True
            readers, self._readers = self._readers, []
        for _, conn in readers:
            conn.close()
        with self._lock:
            self.conn.close()


def _file_identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _split_sql(script: str) -> list[str]:
    """Split a schema script into statements (triggers keep their inner semicolons)."""
    statements: list[str] = []
    buf: list[str] = []
    for line in script.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("--")):
            continue
        buf.append(line)
        text = "\n".join(buf)
        if stripped.endswith(";") and sqlite3.complete_statement(text):
            statements.append(text)
            buf = []
    if "\n".join(buf).strip():
        statements.append("\n".join(buf))
    return statements
