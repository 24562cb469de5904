"""``migrate --to URL``: move a SQLite node into an empty PostgreSQL database."""

from __future__ import annotations

import sys
from typing import Any

import click

from stigmem_node.cli._click import command, root
from stigmem_node.cli._common import EXIT_FAIL, EXIT_OK, Globals, emit, settings_for
from stigmem_node.errors import ConfigError
from stigmem_node.migrate import migrate
from stigmem_node.store.db import is_postgres_url


def _human(r: dict[str, Any]) -> str:
    lines = [f"Copied {r['source']} into {r['target']}:"]
    lines += [f"  {table:<18} {n:>10,} rows" for table, n in r["copied"].items()]
    audit = r["audit_chain"]
    if audit["ok"]:
        lines.append(f"Row counts match. Audit trail intact in the target: {audit['rows']} rows, "
                     f"{audit['checkpoints']} signed checkpoint(s).")
        lines.append("The SQLite file is unchanged. Serve the node from PostgreSQL with STIGMEM_DATABASE_URL "
                     "(or --database-url). Every replica needs this node's API-key pepper: set "
                     f"STIGMEM_API_KEY_PEPPER to the lines of {r['pepper_file']} joined by commas.")
    else:
        lines.append(f"Audit trail NOT verified in the target: {audit['problem']}")
    return "\n".join(lines)


@command(root, "migrate", help="copy this node (--db) into an empty PostgreSQL database")
@click.option("--to", "to", required=True, metavar="URL", help="the empty target: postgresql://USER@HOST:PORT/DB")
def cmd_migrate(g: Globals, to: str) -> int:
    if not is_postgres_url(to):
        raise click.UsageError("--to must be a postgresql:// URL")
    settings = settings_for(g)
    if settings.database_url is not None:
        raise click.UsageError("migrate copies the SQLite node of --db; do not pass --database-url")
    if not settings.db_path.exists():
        raise ConfigError("database_missing", f"no node database at {settings.db_path}; pass --db")
    last: dict[str, int] = {}

    def progress(table: str, done: int) -> None:
        if not g.json and done - last.get(table, 0) >= 50_000:
            last[table] = done
            print(f"  {table}: {done:,} rows", file=sys.stderr, flush=True)

    report = migrate(settings.db_path, to, checkpoint_rows=settings.audit_checkpoint_rows, progress=progress)
    emit(g, {**report.as_dict(), "pepper_file": str(settings.pepper_path)}, _human)
    return EXIT_OK if report.audit is not None and report.audit.ok else EXIT_FAIL
