"""A PostgreSQL node's database read in one snapshot that cannot write (``audit verify``,
``audit anchor``, ``migrate``'s reads): the PostgreSQL side of ``store.readonly``."""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from stigmem_node.errors import ConfigError
from stigmem_node.store.db import StorageFailure
from stigmem_node.store.postgres import DIALECT, _sql, psycopg, redact


class ReadOnlySnapshot:
    """A PostgreSQL database read in one REPEATABLE READ, READ ONLY transaction: every read
    sees one moment, and the server refuses any write (``store.readonly`` for SQLite)."""

    engine = "postgresql"
    dialect = DIALECT
    how = "snapshot"

    def __init__(self, url: str) -> None:
        if psycopg is None:
            raise ConfigError("postgresql_unsupported",
                              "PostgreSQL needs the postgresql extra: pip install 'stigmem-node[postgresql]'")
        self.target = redact(url)
        try:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10, application_name="stigmem-node")
        except psycopg.Error as exc:
            raise ConfigError("database_unavailable", f"cannot connect to {self.target}: {exc}") from None
        tables = {r[0] for r in self.conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}
        if not {"stigmem_schema", "audit_log", "node_meta", "node_keys"} <= tables:
            self.conn.close()
            raise ConfigError("database_unavailable", f"{self.target} is not a usable stigmem database: "
                              "it has no audit trail")

    def changed(self) -> bool:
        return False

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            yield
        finally:
            self.conn.execute("ROLLBACK")

    def transaction(self, *, exclusive: bool = True) -> Any:
        return self.snapshot()

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.conn.execute(_sql(sql), tuple(params) if params else None).fetchone()
        return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(_sql(sql), tuple(params) if params else None).fetchall()

    def iterate(self, sql: str, params: Sequence[Any] = ()) -> Generator[tuple[Any, ...], None, None]:
        yield from self.all(sql, params)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        raise StorageFailure("a read-only snapshot cannot write")

    def returning(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
        raise StorageFailure("a read-only snapshot cannot write")

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise StorageFailure("a read-only snapshot cannot write")

    def ping(self) -> None:
        self.conn.execute("SELECT 1")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ReadOnlySnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
