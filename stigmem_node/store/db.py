"""The SQLite database: file creation (0600), pragmas, schema versions, transactions."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
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
    """One SQLite connection in WAL mode, used from one thread at a time.

    ``transaction()`` opens ``BEGIN IMMEDIATE`` (the write lock up front, so that
    read-then-write sequences such as the audit chain are serialised across processes)
    and nests as savepoints.
    """

    def __init__(self, path: Path | str, synchronous: str = "NORMAL", busy_timeout_ms: int = 10_000, *,
                 create: bool = True) -> None:
        """``create``: make the file and the schema where there is none (a missing or empty
        file).  Either way, a file that is not a stigmem database is refused before anything
        is written to it (``files.inspect``), and the database and its ``-wal``/``-shm``
        files are made private (0600) before SQLite opens them."""
        self.path = Path(path)
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
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError("database_unavailable", f"cannot open database {self.path}: {exc}") from None
        self._lock = threading.RLock()
        self._depth = 0
        self._group_flush: Callable[[], None] | None = None  # set while a GroupCommit is open
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
            self.conn.execute("PRAGMA foreign_keys=ON")
            # After a checkpoint, the WAL file shrinks back to at most this size.
            self.conn.execute("PRAGMA journal_size_limit=67108864")
            self.conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
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
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._depth == 1 and self._group_flush is not None:
                # A group commit is open: commit it now, so that this transaction commits
                # (and is durable) when it ends, as always.
                self._group_flush()
            if self._depth == 0:
                self._run("BEGIN IMMEDIATE")
            else:
                self.conn.execute(f"SAVEPOINT sp{self._depth}")
            self._depth += 1
            try:
                yield self.conn
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self.conn.execute("ROLLBACK")
                else:
                    self.conn.execute(f"ROLLBACK TO sp{self._depth}")
                    self.conn.execute(f"RELEASE sp{self._depth}")
                raise
            else:
                self._depth -= 1
                if self._depth == 0:
                    self.conn.execute("COMMIT")
                else:
                    self.conn.execute(f"RELEASE sp{self._depth}")

    def begin_group(self, flush: Callable[[], None]) -> bool:
        """Open an outermost write transaction for ``GroupCommit``; False if one is open."""
        with self._lock:
            if self._depth != 0:
                return False
            self._run("BEGIN IMMEDIATE")
            self._depth = 1
            self._group_flush = flush
            return True

    def end_group(self, commit: bool) -> None:
        with self._lock:
            self._depth = 0
            self._group_flush = None
            self.conn.execute("COMMIT" if commit else "ROLLBACK")

    def _run(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                raise StorageBusy(message="the database is busy; retry shortly") from None
            raise

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._run(sql, params)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._lock:
            row: tuple[Any, ...] | None = self.conn.execute(sql, params).fetchone()
            return row

    def disable_autocheckpoint(self) -> None:
        """Stop this connection from checkpointing the WAL when it commits (a serving node's
        connection: its checkpoints are run elsewhere, by ``checkpoint``)."""
        self.execute("PRAGMA wal_autocheckpoint=0")

    def checkpoint(self) -> None:
        """Move WAL pages into the database file: a PASSIVE checkpoint, which never blocks
        readers or writers (``StorageBusy`` if it cannot start)."""
        self.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def data_version(self) -> int:
        """Changes whenever another connection (another process) commits a change."""
        with self._lock:
            return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self.conn.close()


class GroupCommit:
    """Commit the nonce inserts of many requests together, before any of them is answered.

    The first insert in a turn of the event loop opens a write transaction; every insert
    until the loop's next turn joins it; one COMMIT then makes them all durable and wakes
    the requests waiting on ``join``'s future, which only then answer.  So a response never
    goes out before its nonce is committed (as with one commit per request), but many
    requests share one commit and one WAL write.

    Replays stay exact: this connection sees its own uncommitted rows, and another process
    inserting the same nonce waits for the write lock and then finds the row.  Any other
    transaction opened meanwhile on this connection first commits the group (early), so
    it stays a transaction of its own that is durable when it ends.  Use only on the event
    loop's thread.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: asyncio.Future[None] | None = None

    def join(self) -> asyncio.Future[None] | None:
        """The future of the open group (opening one), or None when no group can be opened
        (another transaction is open: the caller's write then commits with it)."""
        if self._pending is None:
            loop = asyncio.get_running_loop()
            if not self.db.begin_group(self._commit):
                return None
            self._pending = loop.create_future()
            loop.call_soon(self._commit)
        return self._pending

    @property
    def pending(self) -> asyncio.Future[None] | None:
        return self._pending

    def _commit(self) -> None:
        future, self._pending = self._pending, None
        if future is None:
            return
        try:
            self.db.end_group(commit=True)
        except sqlite3.Error as exc:
            try:
                self.db.end_group(commit=False)
            except sqlite3.Error:
                log.exception("rollback after a failed group commit failed")
            future.set_exception(StorageBusy(message=f"the database could not commit ({type(exc).__name__})"))
            return
        future.set_result(None)


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
