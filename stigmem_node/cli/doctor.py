"""``doctor``: check the node's health, one line per check; exit 1 if any check fails."""

from __future__ import annotations

import sys
from typing import Any

from stigmem_node import doctor
from stigmem_node.cli._click import command, root
from stigmem_node.cli._common import EXIT_FAIL, EXIT_OK, Globals, emit, open_node, settings_for
from stigmem_node.errors import StigmemError


def _human(r: dict[str, Any]) -> str:
    width = max((len(c["name"]) for c in r["checks"]), default=0)
    return "\n".join(f"{c['status']:<4} {c['name']:<{width}}  {c['detail']}" for c in r["checks"])


@command(root, "doctor", help="check the database, files, pepper, URL, peers, clocks, keys and audit chain; "
                              "exit 1 if a check fails")
def cmd_doctor(g: Globals) -> int:
    settings = settings_for(g)
    on_sqlite = settings.database_url is None
    # File modes first: opening the node makes its files private.
    files = doctor.file_mode_checks(settings.db_path if on_sqlite and settings.db_path.exists() else None,
                                    None if settings.pepper else settings.pepper_path)
    try:
        node = open_node(g)
    except StigmemError as exc:  # the database cannot be opened: a FAIL line, not an error
        checks = [*doctor.unreachable_database(f"{exc.message} ({exc.code})"), *files]
    else:
        try:
            checks = node.doctor().run(files)
        finally:
            node.close()
    result = doctor.report(checks)
    emit(g, result, _human)
    sys.stdout.flush()
    return EXIT_OK if result["ok"] else EXIT_FAIL
