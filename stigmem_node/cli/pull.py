"""``pull``: one replication pass over every active peer, for cron.

It logs one ``pull_summary`` line per peer on stderr (``STIGMEM_LOG_FORMAT``; JSON with
``--json``).  On a terminal (stderr is one, no ``--json``) it shows each peer's progress
instead, in place.  Ctrl-C stops it and says what was kept (each page commits on its own)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click

from stigmem_node import logs
from stigmem_node.cli._click import command, root
from stigmem_node.cli._common import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_OK, PROG, Globals, emit, open_node
from stigmem_node.cli.progress import PullProgress, result_line
from stigmem_node.replication.results import PeerResult


@command(root, "pull", help="pull once from every active peer (for cron); exit 1 if any failed")
@click.option("--peer", help="only this peer (peer id or node id)")
@click.option("--allow-insecure-http", is_flag=True,
              help="allow plain http to non-loopback peers (env STIGMEM_ALLOW_INSECURE_HTTP)")
def cmd_pull(g: Globals, *, peer: str | None, allow_insecure_http: bool) -> int:
    node = open_node(g, allow_insecure_http=True if allow_insecure_http else None)
    live = sys.stderr.isatty() and not g.json
    progress = PullProgress(sys.stderr if live else None)
    settings = node.settings
    # On a terminal the progress replaces the log lines (errors still show).
    with logs.to_stderr("error" if live else settings.log_level, "json" if g.json else settings.log_format):
        try:
            result = asyncio.run(node.subscriber().run_pass(peer, progress=progress.done, on_page=progress.page))
        except KeyboardInterrupt:
            progress.finish()
            message = progress.interrupted_message()
            if g.json:
                kept = [{"node_id": k.node_id, "pages": k.pages, "facts": k.facts} for k in progress.kept.values()]
                print(json.dumps({"error": "interrupted", "message": message, "kept": kept}), file=sys.stderr)
            else:
                print(f"{PROG}: {message}", file=sys.stderr)
            return EXIT_INTERRUPTED
        finally:
            progress.finish()

    def human(d: dict[str, Any]) -> str:
        lines = [result_line(PeerResult(**p)) for p in d["peers"]]
        lines.append(f"{d['peers_ok']} peers ok, {d['peers_failed']} failed; facts: {d['new']} new, "
                     f"{d['duplicates']} duplicate, {d['rejected']} rejected; {d['duration_s']:.1f} s")
        return "\n".join(lines)

    emit(g, result.as_dict(), human)
    return EXIT_OK if result.ok else EXIT_FAIL
