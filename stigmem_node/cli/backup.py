"""``backup FILE``: an online, consistent copy of a SQLite node while it serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from stigmem_node.cli._click import Arg, command, root
from stigmem_node.cli._common import EXIT_OK, Globals, emit, open_node


def _human(r: dict[str, Any]) -> str:
    pepper = ("the pepper is in STIGMEM_API_KEY_PEPPER: keep its value with the backup"
              if r["pepper"] is None else f"copy the API key pepper file {r['pepper']} too")
    return (f"Backed up {r['database']} to {r['file']} ({r['bytes']:,} bytes, mode 0600).\n"
            f"Without its pepper no API key of the restored node works: {pepper}.")


@command(root, "backup", help="copy this SQLite node to FILE while it serves (PostgreSQL: use pg_dump)")
@click.argument("file", cls=Arg, metavar="FILE", help="the copy to write (0600); its directory must exist")
@click.option("--force", is_flag=True, help="replace FILE if it exists")
def cmd_backup(g: Globals, *, file: str, force: bool) -> int:
    node = open_node(g)
    try:
        size = node.store.db.backup_to(Path(file), overwrite=force)
        s = node.settings
        emit(g, {"database": s.database_label, "file": file, "bytes": size,
                 "pepper": None if s.pepper else str(s.pepper_path)}, _human)
    finally:
        node.close()
    return EXIT_OK
