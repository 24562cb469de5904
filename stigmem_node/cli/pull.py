"""``pull``: one replication pass over every active peer, for cron."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from stigmem_node.cli._click import command, root
from stigmem_node.cli._common import EXIT_FAIL, EXIT_OK, Globals, emit, open_node


@command(root, "pull", help="pull once from every active peer (for cron); exit 1 if any failed")
@click.option("--peer", help="only this peer (peer id or node id)")
@click.option("--allow-insecure-http", is_flag=True,
              help="allow plain http to non-loopback peers (env STIGMEM_ALLOW_INSECURE_HTTP)")
def cmd_pull(g: Globals, *, peer: str | None, allow_insecure_http: bool) -> int:
    node = open_node(g, allow_insecure_http=True if allow_insecure_http else None)
    tty = sys.stdout.isatty() and not g.json

    def progress(r: Any) -> None:
        if tty:
            mark = "ok " if r.ok else "FAIL"
            tail = f"  {r.error}" if r.error else (f"  ({r.note})" if r.note else "")
            print(f"{mark} {r.node_id}: {r.new} new, {r.duplicates} duplicate, {r.rejected} rejected, "
                  f"{r.pages} pages, {r.duration_s:.1f} s{tail}", flush=True)

    result = asyncio.run(node.subscriber().run_pass(peer, progress=progress))

    def human(d: dict[str, Any]) -> str:
        lines = [] if tty else [
            f"{'ok ' if p['ok'] else 'FAIL'} {p['node_id']}: {p['new']} new, {p['duplicates']} duplicate, "
            f"{p['rejected']} rejected" + (f"  {p['error']}" if p["error"] else "") for p in d["peers"]]
        lines.append(f"{d['peers_ok']} peers ok, {d['peers_failed']} failed; facts: {d['new']} new, "
                     f"{d['duplicates']} duplicate, {d['rejected']} rejected; {d['duration_s']:.1f} s")
        return "\n".join(lines)

    emit(g, result.as_dict(), human)
    return EXIT_OK if result.ok else EXIT_FAIL
