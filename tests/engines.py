"""The storage engines tests run on: SQLite files and PostgreSQL databases.

Storage-dependent tests take the ``engine`` fixture (tests/conftest.py), directly or through
the node fixtures, and so run twice: ``[sqlite]`` and ``[pg]``.  A test that is SQLite by
nature (file modes, WAL files, corrupt files, ``--db`` path handling, pragmas) is marked
``@pytest.mark.sqlite_only`` and runs once.

PostgreSQL: ``STIGMEM_TEST_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``)
is an admin connection, used only to create and drop databases.  Every database a test asks for
is its own (``stigmem_t_<worker>_<hex>``), created from a template prepared once per process
(the node's schema already applied: see ``_Server.template``) and dropped, with
``WITH (FORCE)``, once the test's nodes have stopped.  No state is shared between tests.

If the server cannot be reached, the PostgreSQL half is skipped (one loud line at the end of the
session), or fails with ``STIGMEM_TEST_REQUIRE_POSTGRES=1`` (as ``.ci/run`` sets it).

``connect(target)`` opens either engine's database (a path or a ``postgresql://`` URL) for a
test to inspect or tamper with, with ``?`` placeholders on both: ``node.sql(...)`` uses it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ADMIN_URL_ENV = "STIGMEM_TEST_DATABASE_URL"
REQUIRE_ENV = "STIGMEM_TEST_REQUIRE_POSTGRES"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ENGINES = ("sqlite", "postgresql")
ENGINE_IDS = {"sqlite": "sqlite", "postgresql": "pg"}
SKIP_PREFIX = "PostgreSQL tests need a server:"


def admin_url() -> str:
    return os.environ.get(ADMIN_URL_ENV) or DEFAULT_ADMIN_URL


def postgres_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def redact(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def database_url(base: str, name: str) -> str:
    """``base`` (a postgresql:// URL) pointing at database ``name`` instead, query kept."""
    head, sep, query = base.partition("?")
    scheme, _, rest = head.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{name}{sep}{query}"


def is_postgres(target: Path | str | None) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


# -- reaching the server ---------------------------------------------------------------------------
@functools.cache
def postgres_problem() -> str | None:
    """Why the PostgreSQL tests cannot run here (None: they can).  Asked once per process."""
    url = admin_url()
    try:
        from stigmem_node.config import Settings
    except ImportError as exc:  # pragma: no cover - the package itself is broken
        return f"stigmem_node does not import: {exc}"
    if "database_url" not in {f.name for f in dataclasses.fields(Settings)}:
        return "this stigmem_node has no PostgreSQL engine (Settings.database_url)"
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"PostgreSQL at {redact(url)} unreachable ({first})"
    return None


# -- databases of their own --------------------------------------------------------------------------
def _quote(name: str) -> str:
    assert re.fullmatch(r"[a-z0-9_]+", name), name
    return f'"{name}"'


class _Server:
    """The databases this process made on the server at ``admin_url()``."""

    def __init__(self) -> None:
        self.admin = admin_url()
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.prefix = f"stigmem_t_{re.sub(r'[^a-z0-9]', '', worker.lower())}_"
        self._lock = threading.Lock()
        self._template: str | None = None
        self.created: set[str] = set()
        self.timings: list[float] = []  # seconds per CREATE DATABASE

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(statement)  # type: ignore[arg-type]  # names checked by _quote

    def _create(self, template: str | None) -> str:
        name = self.prefix + secrets.token_hex(6)
        clause = f" TEMPLATE {_quote(template)}" if template else ""
        started = time.perf_counter()
        self._admin(f"CREATE DATABASE {_quote(name)}{clause}")
        self.timings.append(time.perf_counter() - started)
        with self._lock:
            self.created.add(name)
        return name

    def template(self) -> str:
        """A database with the node's schema applied (by the node's own code: a ``Store``
        opened and closed once), from which each test's database is copied: a copy costs
        what an empty database costs, and saves each node its migration."""
        with self._lock:
            if self._template is None:
                from stigmem_node.store import Store

                name = self.prefix + "tpl_" + secrets.token_hex(4)
                self._admin(f"CREATE DATABASE {_quote(name)}")
                self.created.add(name)
                Store(database_url(self.admin, name)).close()
                self._template = name
            return self._template

    def new_database(self, *, empty: bool = False) -> str:
        """A new database of its own: a copy of the template, or ``empty`` (no schema)."""
        name = self._create(None if empty else self.template())
        return database_url(self.admin, name)

    def drop(self, url: str) -> None:
        name = url.partition("?")[0].rsplit("/", 1)[1]
        self._admin(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")
        with self._lock:
            self.created.discard(name)

    def drop_all(self) -> None:
        """At the end of the session: whatever is left (the template, databases of tests
        whose drop failed)."""
        for name in sorted(self.created):
            with contextlib.suppress(Exception):
                self._admin(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")
        self.created.clear()


_server: _Server | None = None


def server() -> _Server:
    global _server
    if _server is None:
        _server = _Server()
    return _server


def server_if_used() -> _Server | None:
    return _server


class Engine:
    """The engine of one test: ``name`` ("sqlite" or "postgresql"), and the databases of its
    nodes.  ``url(name)`` is the database URL of the node called ``name`` (the same database
    for the same name, as the same name gives the same SQLite file), or None on SQLite."""

    def __init__(self, name: str) -> None:
        assert name in ENGINES, name
        self.name = name
        self._urls: dict[str, str] = {}

    @property
    def postgres(self) -> bool:
        return self.name == "postgresql"

    def __repr__(self) -> str:
        return f"Engine({self.name!r})"

    def url(self, name: str = "node", *, empty: bool = False) -> str | None:
        """The PostgreSQL database of the node ``name`` (made on first use; ``empty``: without
        the schema, as a fresh server's database is); None on SQLite."""
        if not self.postgres:
            return None
        if name not in self._urls:
            self._urls[name] = server().new_database(empty=empty)
        return self._urls[name]

    def target(self, db: Path, name: str | None = None) -> Path | str:
        """What storage opens: the node's PostgreSQL URL, or the SQLite file ``db``."""
        return self.url(name or db.stem) or db

    def settings_kw(self, name: str = "node") -> dict[str, Any]:
        """``database_url=...`` for ``Settings(...)`` on PostgreSQL; nothing on SQLite."""
        url = self.url(name)
        return {} if url is None else {"database_url": url}

    def settings(self, db: Path, name: str | None = None, **kw: Any) -> Any:
        """``Settings(db_path=db, **kw)``, on this engine (the database named after ``db``)."""
        from stigmem_node.config import Settings

        if self.postgres:
            provide_pepper(db)
        return Settings(db_path=db, **kw, **self.settings_kw(name or db.stem))

    def cli(self, *args: str, db: Path, **kw: Any) -> Any:
        """``run_cli(*args, db=db)`` on the database of the node named after ``db``."""
        from tests.nodes import run_cli

        return run_cli(*args, db=db, database_url=self.url(db.stem), **kw)

    def cli_process(self, *args: str, db: Path, **kw: Any) -> Any:
        from tests.nodes import run_cli_process

        return run_cli_process(*args, db=db, database_url=self.url(db.stem), **kw)

    def store(self, db: Path, name: str | None = None) -> Any:
        from stigmem_node.store import Store

        if self.postgres:
            provide_pepper(db)
        return Store(self.target(db, name))

    def drop_all(self, after: Callable[[Callable[[], None]], None]) -> None:
        """Drop this test's databases, by ``after`` (which runs its argument once the test's
        nodes have stopped)."""
        urls = list(self._urls.values())
        self._urls.clear()
        if urls:
            def drop() -> None:
                for url in urls:
                    server().drop(url)

            after(drop)


@contextlib.contextmanager
def refusing_connections(url: str) -> Iterator[None]:
    """The PostgreSQL database at ``url`` refuses new connections and loses its open ones
    (a failover, a partition) for the block; it accepts them again after."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    try:
        yield
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def provide_pepper(db: Path | str | None, env: dict[str, str] | None = None) -> None:
    """A node on PostgreSQL never makes its own API key pepper (each replica would make
    another): its operator provides one, in STIGMEM_API_KEY_PEPPER or a pepper file.  Tests
    provide the file, next to ``db`` as on SQLite, unless ``env`` sets the variable."""
    if db is None or (env or {}).get("STIGMEM_API_KEY_PEPPER"):
        return
    path = Path(str(db) + ".pepper")
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"1:{secrets.token_hex(32)}\n")


# -- looking into a database ----------------------------------------------------------------------
class SqlError(Exception):
    """What either driver raised for a statement (an append-only trigger, a constraint)."""


def _placeholders(query: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (and a literal ``%`` doubled), outside quotes."""
    out: list[str] = []
    quote: str | None = None
    for ch in query:
        if quote:
            if ch == quote:
                quote = None
            out.append("%%" if ch == "%" else ch)
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


class Connection:
    """A short-lived connection to a node's database for a test, on either engine: ``?``
    placeholders, rows as tuples; everything done through it commits when the ``with`` block
    ends without an exception (and rolls back otherwise)."""

    def __init__(self, target: Path | str, timeout: float = 10) -> None:
        self.postgres = is_postgres(target)
        if self.postgres:
            import psycopg

            self._pg = psycopg.connect(str(target), connect_timeout=int(timeout))
        else:
            self._lite = sqlite3.connect(target, timeout=timeout)

    rowcount = -1  # of the last execute
    columns: tuple[str, ...] = ()  # the names of the last execute's columns

    def execute(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            if self.postgres:
                cur = self._pg.execute(_placeholders(query), tuple(params))  # type: ignore[arg-type]
                self.rowcount = cur.rowcount
                self.columns = tuple(d[0] for d in cur.description or ())
                return [tuple(r) for r in cur.fetchall()] if cur.description else []
            lite = self._lite.execute(query, tuple(params))
            self.rowcount = lite.rowcount
            self.columns = tuple(d[0] for d in lite.description or ())
            return [tuple(r) for r in lite.fetchall()]
        except (sqlite3.Error, *_pg_errors()) as exc:
            raise SqlError(str(exc)) from exc

    def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            if self.postgres:
                with self._pg.cursor() as cur:
                    cur.executemany(_placeholders(query), [tuple(r) for r in rows])  # type: ignore[arg-type]
            else:
                self._lite.executemany(query, [tuple(r) for r in rows])
        except (sqlite3.Error, *_pg_errors()) as exc:
            raise SqlError(str(exc)) from exc

    def commit(self) -> None:
        (self._pg if self.postgres else self._lite).commit()

    def rollback(self) -> None:
        (self._pg if self.postgres else self._lite).rollback()

    def close(self) -> None:
        (self._pg if self.postgres else self._lite).close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None:
                self.commit()
            else:
                self.rollback()
        finally:
            self.close()


def _pg_errors() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.Error,)


def connect(target: Path | str, timeout: float = 10) -> Connection:
    return Connection(target, timeout)


def sql(target: Path | str, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """One statement on the database at ``target``, committed; its rows."""
    with connect(target) as conn:
        return conn.execute(query, params)


@contextlib.contextmanager
def tampering(target: Path | str) -> Iterator[Connection]:
    """A connection of someone with full write access to the database (the file's owner on
    SQLite, a superuser on PostgreSQL: triggers do not fire for it)."""
    with connect(target) as conn:
        if conn.postgres:
            conn.execute("SET session_replication_role = replica")
        yield conn


def url_kw(database_url: str | None) -> dict[str, Any]:
    """``database_url=...`` for ``Settings(...)`` when there is one (a PostgreSQL node)."""
    return {"database_url": database_url} if database_url else {}


def cli_kw(target: Path | str) -> dict[str, Any]:
    """The ``run_cli`` arguments that name the database ``target`` (a path or a URL)."""
    return {"database_url": target} if is_postgres(target) else {"db": target}


def stored_bytes(target: Path | str) -> bytes:
    """Everything the database keeps: on SQLite every byte of the file, its WAL, shared
    memory and journal; on PostgreSQL every row of every table of the node, as text."""
    if not is_postgres(target):
        data = b""
        for suffix in ("", "-wal", "-shm", "-journal"):
            p = Path(str(target) + suffix)
            if p.exists():
                data += p.read_bytes()
        return data
    with connect(target) as conn:
        tables = [t for (t,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1")]
        rows = [f"{t}: {text}" for t in tables for (text,) in sorted(conn.execute(f'SELECT t::text FROM "{t}" AS t'))]
    return "\n".join(rows).encode()
