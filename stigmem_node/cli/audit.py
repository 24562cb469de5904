"""``audit``: list, tail, verify, anchor and export the audit trail."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from stigmem_node.audit_query import AuditFilter
from stigmem_node.cli._click import INTERVAL, LIMIT, command, group
from stigmem_node.cli._common import EXIT_FAIL, EXIT_OK, Globals, emit, open_node, settings_for
from stigmem_node.clock import iso, parse_rfc3339
from stigmem_node.errors import ConfigError

if TYPE_CHECKING:
    from stigmem_node.node import Node

audit = group("audit", help="read and verify the audit trail")

F = TypeVar("F", bound=Callable[..., int])


def filter_options(func: F) -> F:
    """--peer, --event-type, --since and --until."""
    for option in reversed([
        click.option("--peer", help="peer id or node id"),
        click.option("--event-type", help="only entries of this event type"),
        click.option("--since", help="RFC 3339 time"),
        click.option("--until", help="RFC 3339 time"),
    ]):
        func = option(func)
    return func


def _when(raw: str | None, name: str) -> str | None:
    if raw is None:
        return None
    try:
        return iso(parse_rfc3339(raw))
    except ValueError:
        raise ConfigError(message=f"--{name} must be an RFC 3339 timestamp such as 2026-11-23T00:00:00Z") from None


def _where(node: Node, peer: str | None, event_type: str | None, since: str | None, until: str | None) -> AuditFilter:
    return node.audit_query.where(peer=peer, event_type=event_type, since=_when(since, "since"),
                                  until=_when(until, "until"))


def _line(e: dict[str, Any]) -> str:
    detail = json.dumps(e["detail"], sort_keys=True, ensure_ascii=False) if e["detail"] else ""
    return " ".join(x for x in [str(e["seq"]).rjust(6), e["ts"], e["event_type"], e["reason"] or "",
                                e["peer_id"] or "-", e["actor"] or "-", e["remote_addr"] or "-", detail] if x)


def _lines(entries: list[dict[str, Any]]) -> str:
    return "\n".join(_line(e) for e in entries) or "No audit entries."


@command(audit, "list", help="list audit entries, oldest first")
@filter_options
@click.option("--limit", type=LIMIT, default=100, help="at most this many entries (default 100)")
def cmd_audit_list(g: Globals, *, peer: str | None, event_type: str | None, since: str | None, until: str | None,
                   limit: int) -> int:
    node = open_node(g)
    entries = node.audit_query.entries(_where(node, peer, event_type, since, until), limit=limit)
    emit(g, entries, _lines)
    return EXIT_OK


@command(audit, "tail", help="the newest entries, as audit list prints them; --follow: then one per line as they come")
@click.option("-n", type=LIMIT, default=20, help="how many entries (default 20)")
@click.option("--follow", "-f", is_flag=True, help="keep printing new entries")
@click.option("--interval", type=INTERVAL, default=1.0, help="seconds between looks with --follow (default 1)")
def cmd_audit_tail(g: Globals, *, n: int, follow: bool, interval: float) -> int:
    node = open_node(g)

    def show(e: dict[str, Any]) -> None:
        print(json.dumps(e, sort_keys=True, ensure_ascii=False) if g.json else _line(e), flush=True)

    entries = node.audit_query.newest(n)
    if not follow:  # as audit list prints them
        emit(g, entries, _lines)
        return EXIT_OK
    for e in entries:  # a stream: one entry per line, JSON objects with --json
        show(e)
    last = entries[-1]["seq"] if entries else 0
    try:
        while True:
            time.sleep(interval)
            for e in node.audit_query.after(last):
                show(e)
                last = e["seq"]
    except KeyboardInterrupt:
        return EXIT_OK


@command(audit, "verify", help="check the chain and its checkpoints (read only); exit 1 if broken")
@click.option("--anchor", metavar="FILE", help="also check that the trail still holds this anchor (- for stdin)")
def cmd_audit_verify(g: Globals, *, anchor: str | None) -> int:
    from stigmem_node.audit_anchor import verify_database  # read only: no Node, nothing created

    settings = settings_for(g)
    report = verify_database(settings.database, checkpoint_rows=settings.audit_checkpoint_rows, anchor_file=anchor)
    emit(g, report.as_dict(), lambda _: report.human())
    return EXIT_OK if report.ok else EXIT_FAIL


@command(audit, "anchor", help="print the trail's head signed by the node key, to keep elsewhere")
@click.option("--out", metavar="FILE", help="write it to FILE instead (replaced atomically; - for stdout)")
def cmd_audit_anchor(g: Globals, *, out: str | None) -> int:
    from stigmem_node.audit_anchor import anchor_database, write_anchor
    from stigmem_node.clock import Clock

    write_anchor(anchor_database(settings_for(g).database, Clock()), out)
    return EXIT_OK


@command(audit, "export", help="every entry as JSON lines")
@filter_options
@click.option("--out", help="file to write (default stdout)")
def cmd_audit_export(g: Globals, *, peer: str | None, event_type: str | None, since: str | None,
                     until: str | None, out: str | None) -> int:
    node = open_node(g)
    where = _where(node, peer, event_type, since, until)
    try:
        sink = open(out, "w", encoding="utf-8") if out else sys.stdout  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ConfigError(message=f"cannot write the export to {out}: {exc.strerror or exc}") from None
    try:
        for entry in node.audit_query.export(where):
            sink.write(json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n")
    finally:
        if out:
            sink.close()
    return EXIT_OK
