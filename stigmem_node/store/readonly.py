"""Read-only access to a node's database, for checks that must never write.

``open_read_only`` never runs a migration, never creates an identity, and never changes
the database file's bytes or mtime.  It also works on a read-only copy in a read-only
directory, as a user who may not write either.  SQLite needs care for that with a WAL
database (the node's journal mode):

- Without a ``-wal`` file, everything committed is in the main file.  A plain
  ``mode=ro`` open would create ``-wal`` and ``-shm`` files next to it (owned by whoever
  runs the check), or fail in a read-only directory, so the file is opened with
  ``immutable=1``: SQLite then reads it as a plain file, without locks or side files.
  If a ``-wal`` appears while reading (a server started), ``changed()`` says so and the
  caller reads again the other way.
- With a ``-wal`` and its ``-shm``, ``mode=ro`` reads through them as any reader does
  (SQLite falls back to reading the WAL directly when the ``-shm`` is not writable).
- With a ``-wal`` but no ``-shm`` (a copy, or a crash), or when that open fails, the
  database and its ``-wal`` are copied into a private temporary directory and read there:
  ``immutable=1`` would silently ignore the committed rows in the WAL.

Text that is not valid UTF-8 is returned as ``bytes`` rather than raising, so a checker
can report it as a tampered value.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections.abc import Generator, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from stigmem_node.errors import ConfigError
from stigmem_node.store.db import StorageFailure, is_postgres_url
from stigmem_node.store.sqlite import DIALECT


def _text(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _signature(path: Path) -> tuple[bool, int, int]:
    wal = Path(f"{path}-wal")
    try:
        st = path.stat()
    except OSError:
        return (wal.exists(), -1, -1)
    return (wal.exists(), st.st_mtime_ns, st.st_size)


class ReadOnlyDatabase:
    """A read-only SQLite connection with the ``one``/``all`` reads of ``Database``."""

    engine = "sqlite"
    dialect = DIALECT

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.target = str(self.path)
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._seen = _signature(self.path)
        self.how = ""
        wal, shm = Path(f"{self.path}-wal"), Path(f"{self.path}-shm")
        try:
            if not wal.exists():
                self.conn = self._connect(self.path, "mode=ro&immutable=1")
                self.how = "immutable"
            else:
                conn = None
                if shm.exists():
                    try:
                        conn = self._connect(self.path, "mode=ro")
                        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                        self.how = "wal"
                    except sqlite3.Error:
                        if conn is not None:
                            conn.close()
                        conn = None
                self.conn = conn if conn is not None else self._copy_and_connect(wal)
            self.conn.text_factory = _text
            self.conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise ConfigError("database_unavailable", f"cannot read database {self.path}: {exc}") from None

    @staticmethod
    def _connect(path: Path, query: str) -> sqlite3.Connection:
        uri = f"{path.absolute().as_uri()}?{query}"
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)

    def _copy_and_connect(self, wal: Path) -> sqlite3.Connection:
        self._tmp = tempfile.TemporaryDirectory(prefix="stigmem-verify-")
        os.chmod(self._tmp.name, 0o700)
        copy = Path(self._tmp.name) / "copy.db"
        shutil.copyfile(self.path, copy)
        shutil.copyfile(wal, f"{copy}-wal")
        self.how = "copy"
        return self._connect(copy, "mode=ro")

    def changed(self) -> bool:
        """True if the file changed or a WAL appeared since it was opened immutable."""
        return self.how == "immutable" and _signature(self.path) != self._seen

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees the database as of one moment (one read transaction),
        however much other processes write meanwhile."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("ROLLBACK")

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        try:
            row: tuple[Any, ...] | None = self.conn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise StorageFailure(f"{type(exc).__name__}: {exc}") from None
        return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageFailure(f"{type(exc).__name__}: {exc}") from None

    # With the two below, repositories (store.db.Queryable) read through this database; the
    # connection is read-only, so SQLite refuses any write they attempt.
    def iterate(self, sql: str, params: Sequence[Any] = ()) -> Generator[tuple[Any, ...], None, None]:
        yield from self.conn.execute(sql, params)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    def returning(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
        return tuple(self.conn.execute(sql, params).fetchall()[0])

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def transaction(self, *, exclusive: bool = True) -> AbstractContextManager[object]:
        return self.snapshot()

    def ping(self) -> None:
        self.conn.execute("SELECT 1").fetchone()

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
            self.conn = None  # type: ignore[assignment]
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ReadOnlyDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_read_only(path: Path | str) -> ReadOnlyDatabase:
    """Open an existing stigmem database for reading only (see the module docstring; a
    PostgreSQL URL gives ``postgres_snapshot.ReadOnlySnapshot``, with the same reads).

    Raises ``ConfigError``: ``database_missing`` if there is no file, ``database_unavailable``
    if it cannot be read or is not a stigmem database.
    """
    if is_postgres_url(path):
        from stigmem_node.store.postgres_snapshot import ReadOnlySnapshot

        return ReadOnlySnapshot(str(path))  # type: ignore[return-value]
    path = Path(path)
    try:
        exists = path.is_file()
    except OSError as exc:
        raise ConfigError("database_unavailable", f"cannot read database {path}: {exc.strerror}") from None
    if not exists:
        raise ConfigError("database_missing", f"no node database at {path}; pass --db or set "
                          "STIGMEM_DB_PATH, or create one with 'stigmem-node init'")
    db = ReadOnlyDatabase(path)
    try:
        tables = {r[0] for r in db.all("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        db.close()
        raise ConfigError("database_unavailable", f"cannot read database {path}: {exc}") from None
    if not {"audit_log", "node_meta", "node_keys"} <= tables:
        db.close()
        raise ConfigError("database_unavailable", f"{path} is not a usable stigmem database: it has no audit trail")
    return db
