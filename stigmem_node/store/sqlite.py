"""The SQLite engine: one file in WAL mode, one write connection, a read connection per thread.

- **Writes** go through one connection, one thread at a time (a lock), inside
  ``BEGIN IMMEDIATE`` transactions that take SQLite's write lock up front, so that
  read-then-write sequences are serialised across processes too.  A writer that cannot
  get the lock within the busy timeout (another process holds it) gets ``StorageBusy``.
- **Reads** outside a transaction run on a connection of the calling thread's own.  In WAL
  mode readers never wait for a writer, so reads go on while another process holds the
  write lock for seconds.  Inside a transaction, the thread reads on the write connection
  and sees its own uncommitted rows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stigmem_node.errors import ConfigError
from stigmem_node.store import files
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

log = logging.getLogger("stigmem_node.store")

DIALECT = Dialect(
    name="sqlite",
    hex_text="hex({})",
    audit_seq_issued="SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'",
    last_insert_seq="SELECT last_insert_rowid()",
)


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _translate(exc: sqlite3.Error) -> Exception:
    if isinstance(exc, sqlite3.IntegrityError):
        return ConstraintViolation(str(exc))
    if isinstance(exc, sqlite3.OperationalError) and _busy(exc):
        return StorageBusy()
    return StorageFailure(f"{type(exc).__name__}: {exc}")


def _file_identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _create_private_file(path: Path) -> None:
    """Create the database file with mode 0600 if it does not exist yet."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class _Reader:
    """A thread's read connection; closed when the thread ends (its thread-local goes)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def close(self) -> None:
        conn, self.conn = self.conn, None  # type: ignore[assignment]
        if conn is not None:
            conn.close()

    def __del__(self) -> None:
        try:
            self.close()
        except sqlite3.Error:
            log.debug("closing a read connection failed", exc_info=True)


class _NamedLock:
    def __init__(self, db: SqliteDatabase, name: str) -> None:
        self.db, self.name = db, name

    def release(self) -> None:
        with self.db._names_lock:
            self.db._names.discard(self.name)


class SqliteDatabase:
    engine = "sqlite"
    dialect = DIALECT

    def __init__(self, path: Path | str, synchronous: str = "NORMAL", busy_timeout_ms: int = 10_000, *,
                 create: bool = True) -> None:
        """``create``: make the file and the schema where there is none (a missing or empty
        file).  Either way, a file that is not a stigmem database is refused before anything
        is written to it (``files.inspect``), and the database and its ``-wal``/``-shm``
        files are made private (0600) before SQLite opens them."""
        self.path = Path(path)
        self.target = str(self.path)
        self.busy_timeout_ms = int(busy_timeout_ms)
        self.busy_timeout_s = busy_timeout_ms / 1000
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
            self.conn = self._connect()
            self._identity = _file_identity(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError("database_unavailable", f"cannot open database {self.path}: {exc}") from None
        self._write_lock = threading.RLock()
        self._owner: int | None = None  # the thread inside a write transaction
        self._depth = 0
        self._local = threading.local()
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()
        self._closed = False
        self._names: set[str] = set()  # try_lock
        self._names_lock = threading.Lock()
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
            # After a checkpoint, the WAL file shrinks back to at most this size.
            self.conn.execute("PRAGMA journal_size_limit=67108864")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise ConfigError("database_unavailable", f"{self.path} is not a usable stigmem database: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                               timeout=self.busy_timeout_s)
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        # Deleted content (an erased fact) is overwritten with zeros, not left in free space.
        conn.execute("PRAGMA secure_delete=ON")
        return conn

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
                for statement in split_sql(schema_text("sqlite"), sqlite3.complete_statement):
                    self.conn.execute(statement)
                version = 1
            while version < SCHEMA_VERSION:
                version += 1
                for statement in split_sql(migration_sql(version, 'sqlite'), sqlite3.complete_statement):
                    self.conn.execute(statement)
            self.conn.execute(f"PRAGMA user_version={version}")

    # -- connections ---------------------------------------------------------------------
    def _in_transaction(self) -> bool:
        return self._owner == threading.get_ident()

    def _reader(self) -> sqlite3.Connection:
        if self._in_transaction():
            return self.conn
        reader: _Reader | None = getattr(self._local, "reader", None)
        if reader is None or reader.conn is None:
            if self._closed:
                raise StorageFailure("the database is closed")
            try:  # mode=rw: never create a file where the database was removed
                conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=rw", uri=True, isolation_level=None,
                                       check_same_thread=False, timeout=self.busy_timeout_s)
                conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
                conn.execute("PRAGMA query_only=ON")
                conn.execute("PRAGMA secure_delete=ON")
            except sqlite3.Error as exc:
                raise StorageUnavailable(f"the database cannot be opened ({exc})") from None
            reader = _Reader(conn)
            self._local.reader = reader
            self._readers.add(reader)
        return reader.conn

    def _acquire(self) -> bool:
        """Take this process's write lock; True if the wait shortened SQLite's busy timeout
        (the caller restores it with ``_release``): waiting for this process's own writers
        counts against the busy timeout too."""
        started = time.monotonic()
        if not self._write_lock.acquire(timeout=self.busy_timeout_s):
            raise StorageBusy()
        waited = time.monotonic() - started
        if waited > 0.001 and self._depth == 0:
            remaining = max(0.0, self.busy_timeout_s - waited)
            self.conn.execute(f"PRAGMA busy_timeout={int(remaining * 1000)}")
            return True
        return False

    def _release(self, shortened: bool) -> None:
        try:
            if shortened:
                self.conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        finally:
            self._write_lock.release()

    # -- transactions ----------------------------------------------------------------------
    @contextmanager
    def transaction(self, *, exclusive: bool = True) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction (nested: a savepoint); SQLite has one write lock,
        so ``exclusive`` changes nothing."""
        off_loop()
        shortened = self._acquire()
        try:
            if self._depth == 0:
                try:
                    self.conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    raise _translate(exc) from None
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
                        self.conn.execute("COMMIT")
                    except sqlite3.Error as exc:
                        self.conn.execute("ROLLBACK")
                        raise _translate(exc) from None
                else:
                    self.conn.execute(f"RELEASE sp{self._depth}")
        finally:
            self._release(shortened)

    # -- statements --------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a write; outside a transaction it commits on its own.  The number of rows."""
        off_loop()
        shortened = self._acquire()
        try:
            return self.conn.execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise _translate(exc) from None
        finally:
            self._release(shortened)

    def returning(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
        """Run a write with a ``RETURNING`` clause that yields one row; that row."""
        off_loop()
        shortened = self._acquire()
        try:
            rows = self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc) from None
        finally:
            self._release(shortened)
        return tuple(rows[0])

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        off_loop()
        shortened = self._acquire()
        try:
            self.conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise _translate(exc) from None
        finally:
            self._release(shortened)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        off_loop()
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc) from None

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        off_loop()
        try:
            row: tuple[Any, ...] | None = self._reader().execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise _translate(exc) from None
        return row

    def iterate(self, sql: str, params: Sequence[Any] = ()) -> Generator[tuple[Any, ...], None, None]:
        """Rows one at a time (a read: never hold the iterator across a write)."""
        off_loop()
        try:
            cur = self._reader().execute(sql, params)
            try:
                yield from cur
            finally:
                cur.close()
        except sqlite3.Error as exc:
            raise _translate(exc) from None

    def ping(self) -> None:
        """A trivial read: ``StorageUnavailable`` if the database cannot be read, or its file
        is gone or was replaced since it was opened (this process would write into a file
        nobody else sees)."""
        off_loop()
        try:
            if _file_identity(self.path) != self._identity:
                raise StorageUnavailable(f"the database file {self.path} was removed or replaced")
        except OSError as exc:
            raise StorageUnavailable(f"the database cannot be read ({type(exc).__name__})") from None
        try:
            self.one("SELECT 1 FROM node_meta LIMIT 1")
        except StorageFailure as exc:
            raise StorageUnavailable(f"the database cannot be read ({exc})") from None

    # -- locks -----------------------------------------------------------------------------
    def try_lock(self, name: str) -> _NamedLock | None:
        """The lock named ``name``, without waiting: None if another thread of this process
        holds it.  (A SQLite node is served by one process; PostgreSQL's version of this
        holds across replicas.)"""
        with self._names_lock:
            if name in self._names:
                return None
            self._names.add(name)
        return _NamedLock(self, name)

    # -- upkeep ------------------------------------------------------------------------------
    def refresh_statistics(self) -> list[str]:
        """Nothing to do: SQLite plans the node's queries from its indexes alone."""
        return []

    def disable_autocheckpoint(self) -> None:
        """Stop this database's commits from checkpointing the WAL (a serving node: its
        checkpoints are run by ``checkpoint``, from the maintenance thread)."""
        self.execute("PRAGMA wal_autocheckpoint=0")

    def checkpoint(self) -> None:
        """Move WAL pages into the database file: a PASSIVE checkpoint, which never blocks
        readers or writers (``StorageBusy`` if it cannot start)."""
        self.one("PRAGMA wal_checkpoint(PASSIVE)")

    def reclaim_erased(self) -> bool:
        """After an erasure: copy the WAL into the database and truncate it to zero bytes, so
        that the erased rows' old page images are gone from the WAL too (``secure_delete``
        already zeroed them in the database's pages).  False if a reader kept the WAL from
        being truncated (the next checkpoint completes it)."""
        row = self.returning("PRAGMA wal_checkpoint(TRUNCATE)")
        return not row[0]

    # -- backup ----------------------------------------------------------------------------
    def backup_to(self, path: Path, *, overwrite: bool = False) -> int:
        """An online, consistent copy of the database in ``path``, mode 0600; its size.

        SQLite's backup API copies every page in one step, inside one read transaction: the
        copy is the database as of one commit, while writers (in this process or another)
        go on.  It is written to a private temporary file beside ``path`` and then moved
        into place, so ``path`` never holds a partial copy; an existing ``path`` is refused
        (``backup_refused``) unless ``overwrite``.  The directory must exist."""
        off_loop()
        path = Path(path)
        if path.resolve() in {self.path.resolve(), *(c.resolve() for c in files.companions(self.path))}:
            raise ConfigError("backup_refused", f"{path} is the node's own database file")
        if not path.parent.is_dir():
            raise ConfigError("backup_refused", f"the directory {path.parent} does not exist")
        if path.exists() and not overwrite:
            raise ConfigError("backup_refused", f"{path} already exists (pass --force to replace it)")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
        except OSError as exc:
            raise ConfigError("backup_refused", f"cannot write in {path.parent}: {exc.strerror}") from None
        try:
            # mode=rw, only reading (as the read connections): a WAL database opened read-only
            # would need its -shm to exist already.
            source = sqlite3.connect(self.path.resolve().as_uri() + "?mode=rw", uri=True, isolation_level=None,
                                     timeout=self.busy_timeout_s)
            try:
                source.execute("PRAGMA query_only=ON")
                target = sqlite3.connect(str(tmp), isolation_level=None)
                try:
                    source.backup(target)  # every page in one step: one consistent snapshot
                finally:
                    target.close()
            finally:
                source.close()
            os.chmod(tmp, 0o600)
            if overwrite:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails if path appeared meanwhile: never replace what is there
            return os.stat(path).st_size
        except FileExistsError:
            raise ConfigError("backup_refused", f"{path} already exists (pass --force to replace it)") from None
        except sqlite3.Error as exc:
            raise _translate(exc) from None
        except OSError as exc:
            raise ConfigError("backup_refused", f"cannot write {path}: {exc.strerror}") from None
        finally:
            for leftover in (tmp, *files.companions(tmp)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)

    def close(self) -> None:
        self._closed = True
        for reader in list(self._readers):
            reader.close()
        with self._write_lock:
            self.conn.close()
