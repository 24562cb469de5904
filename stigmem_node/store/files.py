"""The database file on disk: private modes, and telling a stigmem database from anything else.

The database holds the node's private signing key, so it and its ``-wal``/``-shm``
companions are private to their owner (0600) however they came to exist.  SQLite creates
the companions with the database file's own mode, so a private database file keeps them
private too (whatever the umask); ``make_private`` tightens files that already exist.

``inspect`` says what a path holds before anything writes to it, reading its schema
without writing a byte, so that a command that must not create a node never
turns someone else's file into one.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

from stigmem_node.errors import ConfigError

log = logging.getLogger("stigmem_node.store")

# The tables of schema version 1 (schema.sql), which every later version keeps.
CORE_TABLES = frozenset({
    "node_meta", "node_keys", "peers", "peer_keys", "nonce_cache", "facts", "replication_state", "audit_log",
    "api_keys",
})

MISSING, EMPTY, STIGMEM = "missing", "empty", "stigmem"


def companions(path: Path) -> tuple[Path, Path]:
    """The write-ahead log and shared-memory files SQLite keeps beside a database in WAL mode."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def make_private(path: Path) -> bool:
    """Take group and other permissions away from an existing file (0644 becomes 0600),
    with a warning naming the file and its old mode.  True if the mode changed; nothing
    happens to a missing file.  ``ConfigError`` (``insecure_file_mode``) if the mode
    cannot be changed, e.g. because another user owns the file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ConfigError("database_unavailable", f"cannot read the mode of {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(message=f"{path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return False
    new = mode & 0o600
    try:
        os.chmod(path, new)
    except FileNotFoundError:  # a companion file removed meanwhile by the last connection closing
        return False
    except OSError as exc:
        raise ConfigError(
            "insecure_file_mode",
            f"{path} has mode {mode:04o} (readable by other users) and cannot be made private: {exc.strerror}; "
            f"its owner must run: chmod 600 {path}",
        ) from None
    log.warning("%s had mode %04o (readable by other users); changed it to %04o", path, mode, new)
    return True


def make_database_private(path: Path) -> None:
    """The database and its existing ``-wal``/``-shm`` files, 0600."""
    for p in (path, *companions(path)):
        make_private(p)


def _not_ours(path: Path, why: str) -> ConfigError:
    return ConfigError("not_a_stigmem_database", f"{path} is not a usable stigmem database: {why}")


def inspect(path: Path, *, schema_version: int) -> str:
    """What ``path`` holds, without writing anything: ``MISSING``; ``EMPTY`` (a file of 0
    bytes, or a SQLite database with no table and user_version 0, where a node may be
    created); or ``STIGMEM`` (a stigmem database: user_version 1 or more and the core
    tables).  Anything else raises ``ConfigError`` ``not_a_stigmem_database`` (or
    ``schema_too_new``)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return MISSING
    except OSError as exc:
        raise ConfigError("database_unavailable", f"cannot open database {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_ours(path, "not a regular file")
    if st.st_size == 0:
        return EMPTY
    if st.st_size < 512:  # smaller than one page; SQLite would take it for an empty database
        raise _not_ours(path, "not a SQLite database")
    # Only SQLite opens the file: closing a descriptor of our own would drop the POSIX locks
    # of every SQLite connection of this process on it (see "How To Corrupt An SQLite
    # Database File", 2.2), and another process could then delete the -wal and -shm under
    # them.  SQLite refuses a file that is not a database (SQLITE_NOTADB) without writing.
    version, tables = _read_schema(path)
    if version == 0 and not tables:
        return EMPTY
    missing = sorted(CORE_TABLES - tables)
    if missing:
        raise _not_ours(path, f"a SQLite database without the tables of a node (no {', '.join(missing[:3])}); "
                              "pass the --db of a node")
    if version == 0:
        raise _not_ours(path, "its schema version is 0 (it was never completed)")
    if version > schema_version:
        raise ConfigError("schema_too_new", f"database schema version {version} is newer than this node "
                                            f"understands ({schema_version})")
    return STIGMEM


def _read_schema(path: Path) -> tuple[int, set[str]]:
    """user_version and table names, read without writing.

    A read-write connection that only reads changes nothing; unlike a ``mode=ro`` one, it
    also removes the ``-wal``/``-shm`` files a WAL-mode database gets while it is open
    (when it is the last connection), so none is left behind."""
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=10)
    except sqlite3.Error as exc:
        raise ConfigError("database_unavailable", f"cannot open database {path}: {exc}") from None
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            raise _not_ours(path, "not a SQLite database" if "not a database" in str(exc) else str(exc)) from None
        # locked, read-only, I/O error...: a problem of access, not of content
        raise ConfigError("database_unavailable", f"cannot read database {path}: {exc}") from None
    finally:
        conn.close()
    return int(version), tables
