"""``peers``: register, list, show, approve, suspend, resume, revoke, refresh and remove peers."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from stigmem_node.cli._click import Arg, command, group
from stigmem_node.cli._common import EXIT_FAIL, EXIT_OK, Globals, cli_actor, emit, open_node, table
from stigmem_node.config import parse_scopes
from stigmem_node.errors import ConfigError, StigmemError, ValidationError
from stigmem_node.federation import peer_view
from stigmem_node.vocabulary import PEER_STATUSES

peers = group("peers", help="manage peers")

PEER_HELP = "peer id or node id"
REASON_HELP = "why (kept in the audit trail)"
INSECURE_HELP = "allow plain http to a non-loopback peer (env STIGMEM_ALLOW_INSECURE_HTTP)"


def peer_human(p: dict[str, Any]) -> str:
    lines = [
        f"peer id:      {p['peer_id']}",
        f"node id:      {p['node_id']}",
        f"node url:     {p['node_url']}",
        f"status:       {p['status']}" + (f" ({p['reject_reason']})" if p.get("reject_reason") else ""),
        f"scopes:       {', '.join(p['allowed_scopes'])}",
        f"fingerprint:  {p['pubkey_fingerprint']}",
        f"registered:   {p['created_at']}",
    ]
    if p.get("approved_at"):
        lines.append(f"approved:     {p['approved_at']} by {p['approved_by']}")
    r = p.get("replication")
    if r:
        lines.append(f"last pull:    {r['last_attempt_at'] or 'never'} "
                     f"(last success {r['last_success_at'] or 'never'})")
        lines.append(f"pulled:       {r['facts_ingested']} facts, {r['facts_rejected']} rejected, "
                     f"cursor {r['cursor']}")
        if r["last_error"]:
            lines.append(f"last error:   {r['last_error']}")
    lines.extend(f"  {h['ts']}  {h['event_type']}  {h['actor'] or ''}  {h['reason'] or ''}".rstrip()
                 for h in p.get("history", []))
    return "\n".join(lines)


@command(peers, "add", help="fetch, verify and register a peer")
@click.argument("url", cls=Arg, help="the peer's node URL")
@click.option("--scopes", help="scopes to allow this peer, comma-separated (default: all it declares)")
@click.option("--declaration",
              help="a JSON file with the peer's signed declaration (for nodes that do not publish one)")
@click.option("--allow-insecure-http", is_flag=True, help=INSECURE_HELP)
def cmd_peers_add(g: Globals, *, url: str, scopes: str | None, declaration: str | None,
                  allow_insecure_http: bool) -> int:
    from stigmem_node import declaration as decl_mod
    from stigmem_node import node_url as node_urls

    try:
        url = str(node_urls.parse(url))
    except node_urls.InvalidNodeUrl as exc:
        raise ConfigError(exc.code, exc.message) from None
    node = open_node(g, allow_insecure_http=True if allow_insecure_http else None)
    allowed = parse_scopes(scopes) if scopes else None
    if declaration:
        try:
            body = json.loads(Path(declaration).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError("invalid_declaration_file",
                              f"cannot read a JSON declaration from {declaration}: {exc}") from None
    else:
        doc = asyncio.run(node.outbound.fetch_well_known(url))
        body = doc.get("declaration")
        if not isinstance(body, dict):
            raise StigmemError("no_published_declaration",
                               "that node publishes no declaration in its well-known; pass --declaration FILE")
    try:  # only to tell the operator about another URL; register() authenticates the declaration
        named = decl_mod.parse(body).node_url
    except decl_mod.DeclarationRejected:
        named = None
    if named is not None and str(node_urls.parse(named)) != url:
        print(f"note: the declaration names {named}, not {url}", file=sys.stderr, flush=True)
    try:
        peer = asyncio.run(node.federation.register(body, actor=cli_actor(), scopes=allowed))
    except ValidationError as exc:
        if declaration and exc.code in (decl_mod.INVALID_NODE_URL, decl_mod.INVALID_NODE_ID):
            raise ConfigError(exc.code, f"{declaration}: {exc.message}") from None  # a bad file: exit 2
        raise
    view = peer_view(peer)

    def human(p: dict[str, Any]) -> str:
        head = (f"Registered {p['node_id']} as {p['status']}."
                if p["status"] != "rejected" else f"Rejected {p['node_id']}: {p['reject_reason']}.")
        tail = ("\nCompare this fingerprint with the peer's operator, then run:\n"
                f"  stigmem-node peers approve {p['peer_id']} --fingerprint {p['pubkey_fingerprint']}"
                if p["status"] == "pending_approval" else "")
        return f"{head}\n{peer_human(p)}{tail}"

    emit(g, view, human)
    return EXIT_OK if peer.status == "pending_approval" else EXIT_FAIL


@command(peers, "list", help="list peers")
@click.option("--status", type=click.Choice(PEER_STATUSES), help="only peers in this status")
def cmd_peers_list(g: Globals, *, status: str | None) -> int:
    node = open_node(g)
    views = node.federation.views(node.federation.list_peers(status))

    def human(vs: list[dict[str, Any]]) -> str:
        if not vs:
            return "No peers."
        rows = []
        for v in vs:
            r = v["replication"]
            last = (r["last_success_at"] or "never")[:19]
            rows.append([v["node_id"], v["status"], ",".join(v["allowed_scopes"]), v["pubkey_fingerprint"],
                         last, str(r["facts_ingested"]), str(r["facts_rejected"]), (r["last_error"] or "")[:50]])
        return table(rows, ["NODE ID", "STATUS", "SCOPES", "FINGERPRINT", "LAST PULL OK", "IN", "REJECTED",
                            "LAST ERROR"])

    emit(g, views, human)
    return EXIT_OK


@command(peers, "show", help="show one peer with its history")
@click.argument("peer", cls=Arg, help=PEER_HELP)
def cmd_peers_show(g: Globals, *, peer: str) -> int:
    node = open_node(g)
    record = node.federation.get(peer)
    (view,) = node.federation.views([record])
    emit(g, {**view, "history": node.federation.history(record)}, peer_human)
    return EXIT_OK


@command(peers, "approve", help="approve a pending peer by its key fingerprint")
@click.argument("peer", cls=Arg, help=PEER_HELP)
@click.option("--fingerprint", required=True, help="sha256:… as confirmed with the peer's operator")
def cmd_peers_approve(g: Globals, *, peer: str, fingerprint: str) -> int:
    node = open_node(g)
    record = node.federation.approve(peer, fingerprint, actor=cli_actor())
    emit(g, peer_view(record), lambda p: f"Approved {p['node_id']}: now {p['status']}.")
    return EXIT_OK


def _change(g: Globals, action: str, verb: str, peer: str, reason: str | None) -> int:
    node = open_node(g)
    record = getattr(node.federation, action)(peer, actor=cli_actor(), reason=reason)
    emit(g, peer_view(record), lambda p: f"{verb} {p['node_id']}: now {p['status']}.")
    return EXIT_OK


@command(peers, "suspend", help="stop serving and pulling a peer for now")
@click.argument("peer", cls=Arg, help=PEER_HELP)
@click.option("--reason", help=REASON_HELP)
def cmd_peers_suspend(g: Globals, *, peer: str, reason: str | None) -> int:
    return _change(g, "suspend", "Suspended", peer, reason)


@command(peers, "resume", help="resume a suspended peer")
@click.argument("peer", cls=Arg, help=PEER_HELP)
@click.option("--reason", help=REASON_HELP)
def cmd_peers_resume(g: Globals, *, peer: str, reason: str | None) -> int:
    return _change(g, "resume", "Resumed", peer, reason)


@command(peers, "revoke", help="revoke a peer for good")
@click.argument("peer", cls=Arg, help=PEER_HELP)
@click.option("--reason", help=REASON_HELP)
def cmd_peers_revoke(g: Globals, *, peer: str, reason: str | None) -> int:
    return _change(g, "revoke", "Revoked", peer, reason)


@command(peers, "refresh", help="re-read a peer's well-known and follow an endorsed key rotation")
@click.argument("peer", cls=Arg, help=PEER_HELP)
@click.option("--allow-insecure-http", is_flag=True, help=INSECURE_HELP)
def cmd_peers_refresh(g: Globals, *, peer: str, allow_insecure_http: bool) -> int:
    node = open_node(g, allow_insecure_http=True if allow_insecure_http else None)
    record = node.federation.get(peer)
    outcome = asyncio.run(node.federation.refresh_peer_keys(record, actor=cli_actor().name))
    reason = None if outcome.rotated else outcome.value
    view = {**peer_view(node.federation.get(record.id)), "refresh": reason or "key_rotated"}

    def human(v: dict[str, Any]) -> str:
        if reason is None:
            return f"{v['node_id']} rotated its key; now pinned: {v['pubkey_fingerprint']}"
        if reason == "key_unchanged":
            return f"{v['node_id']} still uses the pinned key {v['pubkey_fingerprint']}."
        return f"{v['node_id']}: key not refreshed ({reason})."

    emit(g, view, human)
    return EXIT_OK if reason in (None, "key_unchanged") else EXIT_FAIL


@command(peers, "remove", help="delete a rejected or revoked peer so it can register again")
@click.argument("peer", cls=Arg, help=PEER_HELP)
@click.option("--reason", help=REASON_HELP)
def cmd_peers_remove(g: Globals, *, peer: str, reason: str | None) -> int:
    node = open_node(g)
    record = node.federation.remove(peer, actor=cli_actor(), reason=reason)
    emit(g, {**peer_view(record), "removed": True}, lambda p: f"Removed {p['node_id']}; it may register again.")
    return EXIT_OK
