"""Move a node from its SQLite file into an empty PostgreSQL database (``stigmem-node
migrate --to``), as one node: the same identity and keys, peers, facts with their seq
(cursors that peers hold stay valid), tombstones and the ids of the facts they erased,
subscriber cursors, replication activity, nonces, the audit trail row for row, and API keys
(``store.copy.TABLES``; the status page's sessions are not copied: operators sign in again).

The source is read through ``store.readonly`` (nothing is written to it, not even a
``-wal`` file) inside one snapshot, so it must already be at this version's schema (nothing
upgrades it here: any other command does).  The target must be empty; everything is copied in one
transaction, so a failure leaves it empty.  Afterwards every table's row count is compared
and the target's audit chain is verified (hash chain, signed checkpoints, no gap).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stigmem_node.audit_verify import VerifyReport, verify_chain
from stigmem_node.errors import StigmemError
from stigmem_node.store import copy, open_database
from stigmem_node.store.db import SCHEMA_VERSION
from stigmem_node.store.readonly import open_read_only


class MigrationRefused(StigmemError):
    code = "migration_refused"


@dataclass
class MigrationReport:
    source: str
    target: str
    counts: dict[str, int] = field(default_factory=dict)
    audit: VerifyReport | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "copied": self.counts,
                "audit_chain": None if self.audit is None else self.audit.as_dict()}


def migrate(source: Path | str, target: str, *, checkpoint_rows: int,
            progress: Callable[[str, int], None] | None = None) -> MigrationReport:
    """Copy the node at ``source`` into the empty database ``target``; verify; report."""
    report = MigrationReport(str(source), "")
    with open_read_only(source) as src:
        row = src.one("PRAGMA user_version")
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise MigrationRefused(message=f"{source} has schema version {version}, newer than this "
                                           f"stigmem-node understands ({SCHEMA_VERSION})")
        if version < SCHEMA_VERSION:  # the read-only source is never upgraded here
            raise MigrationRefused(message=f"{source} has schema version {version}, older than this "
                                           f"stigmem-node copies ({SCHEMA_VERSION}): open it once with this "
                                           "version to upgrade it (e.g. stigmem-node info --db PATH), then migrate")
        dst = open_database(target, create=True)
        report.target = dst.target
        try:
            if not _is_empty(dst):
                raise MigrationRefused(message=f"{dst.target} already holds a node: migrate only into an empty "
                                               "database (nothing was copied)")
            with src.snapshot():
                expected = {table: copy.count(src, table) for table in copy.TABLES}
                issued = {table: copy.seq_issued(src, table) for table in ("facts", "tombstones", "audit_log")}
                with dst.transaction():
                    for table in copy.TABLES:
                        done = 0
                        for chunk in copy.rows(src, table):
                            copy.insert(dst, table, chunk)
                            done += len(chunk)
                            if progress is not None:
                                progress(table, done)
                    for table, seq in issued.items():
                        copy.set_seq_issued(dst, table, seq)
                    if src.changed():  # rolls the copy back
                        raise MigrationRefused(message="the source database changed while it was read: stop "
                                                       "the node first, then migrate")
            report.counts = {table: copy.count(dst, table) for table in copy.TABLES}
            wrong = {t: (expected[t], n) for t, n in report.counts.items() if n != expected[t]}
            if wrong:
                raise MigrationRefused(message=f"row counts differ after the copy: {wrong}")
            report.audit = verify_chain(dst, checkpoint_rows=checkpoint_rows)
            dst.refresh_statistics()  # the planner's statistics of the tables just filled
        finally:
            dst.close()
    return report


def _is_empty(db: Any) -> bool:
    return all(copy.count(db, table) == 0 for table in copy.TABLES)
