"""The ``stigmem-node`` command line: thin calls into the node's use cases.

Human output by default, ``--json`` everywhere, exit 0 on success, 1 on a refused
action, 2 on bad usage or configuration, 70 on an internal error.  Every error prints
one line, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, NoReturn

from stigmem_node import __version__
from stigmem_node.apikeys import PERMISSIONS, key_public_dict, parse_permissions
from stigmem_node import audit as ev
from stigmem_node.audit import entry_dict
from stigmem_node.clock import iso, parse_rfc3339
from stigmem_node.config import Settings, from_env, parse_scopes
from stigmem_node.errors import ConfigError, StigmemError, ValidationError
from stigmem_node.federation import Actor, peer_view

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 70


# -- plumbing -------------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> Settings:
    settings = from_env()
    return settings.with_overrides(
        db_path=Path(args.db) if getattr(args, "db", None) else None,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        node_url=getattr(args, "node_url", None),
        pull_interval_s=getattr(args, "pull_interval", None),
        allow_insecure_http=True if getattr(args, "allow_insecure_http", False) else None,
        trusted_proxies=getattr(args, "trusted_proxies", None),
        request_timeout_s=getattr(args, "request_timeout", None),
        max_connections=getattr(args, "max_connections", None),
    )


def _node(args: argparse.Namespace, *, serving: bool = False, create: bool = False):
    """The node of ``--db``.  Only ``serve`` and ``init`` create a database (and identity and
    pepper); every other command refuses to run against a path where there is none (a typo
    must not make a new node) or a file that is not a stigmem database, and changes nothing."""
    from stigmem_node.node import Node

    settings = _settings(args)
    if not (serving or create) and not settings.db_path.exists():
        raise ConfigError("database_missing", f"no node database at {settings.db_path}; pass --db or set "
                          "STIGMEM_DB_PATH, or create one with 'stigmem-node init'")
    return Node(settings, serving=serving, create=serving or create)


def _print_first_key(node, key: str) -> None:
    print(
        "First start: created the node identity and this admin API key (shown once, store it now):\n"
        f"  {key}\n"
        f"  use it as:  curl -H 'Authorization: Bearer {key[:10]}…' {node.identity.node_url}/v1/federation/peers\n"
        f"Node {node.identity.node_id}, key fingerprint {node.identity.fingerprint}",
        flush=True,
    )


def bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``lo`` to ``hi``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi:,}, got {text[:40]}")
        return value

    return parse


LIMIT = bounded_int(1, 100_000)
EXPIRES_IN_DAYS = bounded_int(1, 36_500)


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (and exit 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600, got {text}")
    return value


def _cli_actor() -> Actor:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(f"cli:{user}", "local")


def _emit(args: argparse.Namespace, data: Any, human: Callable[[Any], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(human(data))


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), *(line(r) for r in rows)])


# -- serve ----------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from stigmem_node.http.server import bind, serve
    from stigmem_node.node import Node

    settings = _settings(args)
    # Listen first: a port in use or a host that does not resolve fails before anything exists.
    sockets = bind(settings.host, settings.port)
    try:
        node = Node(settings, serving=True)
        key = node.first_admin_key()
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if key:
        _print_first_key(node, key)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"stigmem-node {__version__}: node {node.identity.node_url} listening on {settings.host}:{settings.port} "
          f"(database {settings.db_path})", flush=True)
    serve(node, sockets, access_log=bool(args.access_log))
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    node = _node(args, serving=True)
    key = node.first_admin_key()
    info = {**node.info(), "admin_key": key}
    _emit(args, info, lambda i: (f"Node {i['node_id']} is ready in {i['database']} "
                                 f"(fingerprint {i['pubkey_fingerprint']})."
                                 + (f"\nAdmin API key (shown once, store it now):\n  {key}" if key else "")))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from stigmem_node.demo import run_demo

    return asyncio.run(run_demo())


# -- info -----------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    node = _node(args)
    info = node.info()

    def human(i: dict) -> str:
        return "\n".join([
            f"node id:      {i['node_id']}",
            f"node url:     {i['node_url'] or '(not served yet)'}",
            f"key id:       {i['key_id']}",
            f"public key:   {i['federation_pubkey']}",
            f"fingerprint:  {i['pubkey_fingerprint']}",
            f"shares:       {', '.join(i['shared_scopes'])}",
            f"database:     {i['database']}",
            "declaration:",
            "  " + json.dumps(i["declaration"], sort_keys=True),
        ])

    _emit(args, info, human)
    return EXIT_OK


# -- peers ----------------------------------------------------------------------------
def _peer_human(p: dict) -> str:
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
        lines.append(f"last pull:    {r['last_attempt_at'] or 'never'} (last success {r['last_success_at'] or 'never'})")
        lines.append(f"pulled:       {r['facts_ingested']} facts, {r['facts_rejected']} rejected, cursor {r['cursor']}")
        if r["last_error"]:
            lines.append(f"last error:   {r['last_error']}")
    for h in p.get("history", []):
        lines.append(f"  {h['ts']}  {h['event_type']}  {h['actor'] or ''}  {h['reason'] or ''}".rstrip())
    return "\n".join(lines)


def cmd_peers_add(args: argparse.Namespace) -> int:
    from stigmem_node import declaration as decl_mod
    from stigmem_node import node_url as node_urls
    from stigmem_node.outbound import fetch_well_known

    try:
        url = str(node_urls.parse(args.url))
    except node_urls.InvalidNodeUrl as exc:
        raise ConfigError(exc.code, exc.message) from None
    node = _node(args)
    scopes = parse_scopes(args.scopes) if args.scopes else None
    if args.declaration:
        try:
            body = json.loads(Path(args.declaration).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError("invalid_declaration_file", f"cannot read a JSON declaration from {args.declaration}: {exc}")
    else:
        doc = asyncio.run(fetch_well_known(url, timeout_s=node.settings.outbound_timeout_s,
                                           allow_insecure_http=node.settings.allow_insecure_http))
        body = doc.get("declaration")
        if not isinstance(body, dict):
            raise StigmemError("no_published_declaration",
                               "that node publishes no declaration in its well-known; pass --declaration FILE")
    decl, reason = decl_mod.verify(body, node.clock.now(), leeway=node.federation.leeway)
    if decl is not None and str(node_urls.parse(decl.node_url)) != url:
        print(f"note: the declaration names {decl.node_url}, not {url}", file=sys.stderr)
    try:
        peer = asyncio.run(node.federation.register(body, actor=_cli_actor(), scopes=scopes))
    except ValidationError as exc:
        if args.declaration and exc.code in (decl_mod.INVALID_NODE_URL, decl_mod.INVALID_NODE_ID):
            raise ConfigError(exc.code, f"{args.declaration}: {exc.message}") from None  # a bad file: exit 2
        raise
    view = peer_view(peer)

    def human(p: dict) -> str:
        head = (f"Registered {p['node_id']} as {p['status']}."
                if p["status"] != "rejected" else f"Rejected {p['node_id']}: {p['reject_reason']}.")
        tail = ("\nCompare this fingerprint with the peer's operator, then run:\n"
                f"  stigmem-node peers approve {p['peer_id']} --fingerprint {p['pubkey_fingerprint']}"
                if p["status"] == "pending_approval" else "")
        return f"{head}\n{_peer_human(p)}{tail}"

    _emit(args, view, human)
    return EXIT_OK if peer.status == "pending_approval" else EXIT_FAIL


def cmd_peers_list(args: argparse.Namespace) -> int:
    node = _node(args)
    views = node.federation.views(node.federation.list(args.status))

    def human(vs: list[dict]) -> str:
        if not vs:
            return "No peers."
        rows = []
        for v in vs:
            r = v["replication"]
            last = (r["last_success_at"] or "never")[:19]
            rows.append([v["node_id"], v["status"], ",".join(v["allowed_scopes"]), v["pubkey_fingerprint"][:23] + "…",
                         last, str(r["facts_ingested"]), str(r["facts_rejected"]), (r["last_error"] or "")[:50]])
        return _table(rows, ["NODE ID", "STATUS", "SCOPES", "FINGERPRINT", "LAST PULL OK", "IN", "REJECTED",
                             "LAST ERROR"])

    _emit(args, views, human)
    return EXIT_OK


def cmd_peers_show(args: argparse.Namespace) -> int:
    node = _node(args)
    peer = node.federation.get(args.peer)
    (view,) = node.federation.views([peer])
    _emit(args, {**view, "history": node.federation.history(peer)}, _peer_human)
    return EXIT_OK


# -- pull -----------------------------------------------------------------------------
def cmd_pull(args: argparse.Namespace) -> int:
    node = _node(args)
    tty = sys.stdout.isatty() and not args.json

    def progress(r) -> None:
        if tty:
            mark = "ok " if r.ok else "FAIL"
            tail = f"  {r.error}" if r.error else (f"  ({r.note})" if r.note else "")
            print(f"{mark} {r.node_id}: {r.new} new, {r.duplicates} duplicate, {r.rejected} rejected, "
                  f"{r.pages} pages, {r.duration_s:.1f} s{tail}", flush=True)

    result = asyncio.run(node.subscriber().run_pass(args.peer, progress=progress))

    def human(d: dict) -> str:
        lines = [] if tty else [
            f"{'ok ' if p['ok'] else 'FAIL'} {p['node_id']}: {p['new']} new, {p['duplicates']} duplicate, "
            f"{p['rejected']} rejected" + (f"  {p['error']}" if p["error"] else "") for p in d["peers"]]
        lines.append(f"{d['peers_ok']} peers ok, {d['peers_failed']} failed; facts: {d['new']} new, "
                     f"{d['duplicates']} duplicate, {d['rejected']} rejected; {d['duration_s']:.1f} s")
        return "\n".join(lines)

    _emit(args, result.as_dict(), human)
    return EXIT_OK if result.ok else EXIT_FAIL


def cmd_peers_approve(args: argparse.Namespace) -> int:
    node = _node(args)
    peer = node.federation.approve(args.peer, args.fingerprint, actor=_cli_actor())
    _emit(args, peer_view(peer), lambda p: f"Approved {p['node_id']}: now {p['status']}.")
    return EXIT_OK


def _peer_action(name: str, verb: str):
    def run(args: argparse.Namespace) -> int:
        node = _node(args)
        peer = getattr(node.federation, name)(args.peer, actor=_cli_actor(), reason=args.reason)
        _emit(args, peer_view(peer), lambda p: f"{verb} {p['node_id']}: now {p['status']}.")
        return EXIT_OK

    return run


def cmd_peers_refresh(args: argparse.Namespace) -> int:
    node = _node(args)
    peer = node.federation.get(args.peer)
    outcome = asyncio.run(node.federation.refresh_peer_keys(peer, actor=_cli_actor().name))
    reason = None if outcome.rotated else outcome.value
    view = {**peer_view(node.federation.get(peer.id)), "refresh": reason or "key_rotated"}

    def human(v: dict) -> str:
        if reason is None:
            return f"{v['node_id']} rotated its key; now pinned: {v['pubkey_fingerprint']}"
        if reason == "key_unchanged":
            return f"{v['node_id']} still uses the pinned key {v['pubkey_fingerprint']}."
        return f"{v['node_id']}: key not refreshed ({reason})."

    _emit(args, view, human)
    return EXIT_OK if reason in (None, "key_unchanged") else EXIT_FAIL


def cmd_peers_remove(args: argparse.Namespace) -> int:
    node = _node(args)
    peer = node.federation.remove(args.peer, actor=_cli_actor(), reason=args.reason)
    _emit(args, {**peer_view(peer), "removed": True}, lambda p: f"Removed {p['node_id']}; it may register again.")
    return EXIT_OK


# -- audit ----------------------------------------------------------------------------
def _audit_filters(node, args: argparse.Namespace) -> dict[str, Any]:
    peer_id = None
    if getattr(args, "peer", None):
        found = node.store.peers.by_node_id(args.peer) or node.store.peers.get(args.peer)
        peer_id = found.id if found else args.peer

    def when(raw: str | None, name: str) -> str | None:
        if raw is None:
            return None
        try:
            return iso(parse_rfc3339(raw))
        except ValueError:
            raise ConfigError(message=f"--{name} must be an RFC 3339 timestamp such as 2026-11-23T00:00:00Z") from None

    return {"peer_id": peer_id, "event_type": getattr(args, "event_type", None),
            "since": when(getattr(args, "since", None), "since"), "until": when(getattr(args, "until", None), "until")}


def _audit_line(e: dict) -> str:
    detail = json.dumps(e["detail"], sort_keys=True, ensure_ascii=False) if e["detail"] else ""
    return " ".join(x for x in [str(e["seq"]).rjust(6), e["ts"], e["event_type"], e["reason"] or "",
                                e["peer_id"] or "-", e["actor"] or "-", e["remote_addr"] or "-", detail] if x)


def cmd_audit_list(args: argparse.Namespace) -> int:
    node = _node(args)
    rows = node.store.audit.page(limit=args.limit, **_audit_filters(node, args))
    entries = [entry_dict(r) for r in rows]
    _emit(args, entries, lambda es: "\n".join(_audit_line(e) for e in es) or "No audit entries.")
    return EXIT_OK


def cmd_audit_tail(args: argparse.Namespace) -> int:
    node = _node(args)
    rows = list(reversed(node.store.audit.page(limit=args.n, descending=True)))
    for r in rows:
        e = entry_dict(r)
        print(json.dumps(e, sort_keys=True, ensure_ascii=False) if args.json else _audit_line(e), flush=True)
    if not args.follow:
        return EXIT_OK
    last = rows[-1].seq if rows else 0
    try:
        while True:
            time.sleep(args.interval)
            for r in node.store.audit.page(after=last, limit=500):
                e = entry_dict(r)
                print(json.dumps(e, sort_keys=True, ensure_ascii=False) if args.json else _audit_line(e), flush=True)
                last = r.seq
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from stigmem_node.audit_anchor import verify_database  # read only: no Node, nothing created

    settings = _settings(args)
    report = verify_database(settings.db_path, checkpoint_rows=settings.audit_checkpoint_rows,
                             anchor_file=args.anchor)
    _emit(args, report.as_dict(), lambda _: report.human())
    return EXIT_OK if report.ok else EXIT_FAIL


def cmd_audit_anchor(args: argparse.Namespace) -> int:
    from stigmem_node.audit_anchor import anchor_database, write_anchor
    from stigmem_node.clock import Clock

    write_anchor(anchor_database(_settings(args).db_path, Clock()), args.out)
    return EXIT_OK


def cmd_audit_export(args: argparse.Namespace) -> int:
    node = _node(args)
    filters = _audit_filters(node, args)
    try:
        out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    except OSError as exc:
        raise ConfigError(message=f"cannot write the export to {args.out}: {exc.strerror or exc}") from None
    try:
        for row in node.store.audit.iter_listing():
            if (filters["peer_id"] and row.peer_id != filters["peer_id"]) \
                    or (filters["event_type"] and row.event_type != filters["event_type"]) \
                    or (filters["since"] and row.ts < filters["since"]) or (filters["until"] and row.ts >= filters["until"]):
                continue
            e = entry_dict(row)
            e["prev_hash"] = row.prev_hash
            out.write(json.dumps(e, sort_keys=True, ensure_ascii=False) + "\n")
    finally:
        if args.out:
            out.close()
    return EXIT_OK


# -- api keys -------------------------------------------------------------------------
def cmd_apikey_create(args: argparse.Namespace) -> int:
    node = _node(args)
    perms = parse_permissions(args.permissions)
    expires = iso(node.clock.now() + timedelta(days=args.expires_in_days)) if args.expires_in_days else None
    with node.store.transaction():  # the key and its audit row, together
        key, rec = node.apikeys.create(perms, label=args.label, expires_at=expires)
        node.audit.record(ev.APIKEY_CREATED, actor=_cli_actor().name, remote_addr="local",
                          detail={"id": rec.id, "permissions": list(perms), "label": args.label})
    data = {**key_public_dict(rec), "key": key}
    _emit(args, data, lambda d: f"{d['key']}\n(shown once; permissions: {', '.join(d['permissions'])})")
    return EXIT_OK


def cmd_apikey_list(args: argparse.Namespace) -> int:
    node = _node(args)
    keys = [key_public_dict(r) for r in node.apikeys.list()]

    def human(ks: list[dict]) -> str:
        if not ks:
            return "No API keys."
        now = iso(datetime.now(timezone.utc))
        rows = [[k["prefix"] + "…", ",".join(k["permissions"]), k["label"] or "", k["created_at"][:19],
                 "revoked" if k["revoked_at"] else ("expired" if k["expires_at"] and k["expires_at"] <= now else "active"),
                 (k["last_used_at"] or "never")[:19]] for k in ks]
        return _table(rows, ["KEY", "PERMISSIONS", "LABEL", "CREATED", "STATE", "LAST USED"])

    _emit(args, keys, human)
    return EXIT_OK


def cmd_apikey_revoke(args: argparse.Namespace) -> int:
    node = _node(args)
    with node.store.transaction():  # the revocation and its audit row, together
        rec, changed = node.apikeys.revoke(args.id)
        if changed:
            node.audit.record(ev.APIKEY_REVOKED, actor=_cli_actor().name, remote_addr="local", detail={"id": rec.id})
    _emit(args, key_public_dict(rec),
          lambda d: f"{'Revoked' if changed else 'Already revoked:'} API key {d['prefix']}…")
    return EXIT_OK


# -- keys -----------------------------------------------------------------------------
def cmd_keys_rotate(args: argparse.Namespace) -> int:
    if not 0 <= args.grace <= 24 * 30:  # also refuses NaN
        raise ConfigError(message=f"--grace must be between 0 and 720 hours, got {args.grace:g}")
    node = _node(args)
    result = node.rotate_key(timedelta(hours=args.grace), actor=_cli_actor().name)
    _emit(args, result, lambda r: (
        f"New signing key {r['key_id']} (fingerprint {r['pubkey_fingerprint']}).\n"
        f"The old key {r['old_key_id']} still verifies until {r['old_key_verifies_until']}; "
        f"{r['facts_resigned']} facts re-signed. A running server adopts the new key within seconds.\n"
        "Peers running this software follow the rotation by themselves; tell the operators of other "
        "peers the new fingerprint."))
    return EXIT_OK


# -- tokens ---------------------------------------------------------------------------
def cmd_token_mint(args: argparse.Namespace) -> int:
    node = _node(args)
    peer = node.federation.get(args.peer)
    scopes = parse_scopes(args.scopes) if args.scopes else peer.allowed_scopes
    if not (0 < args.ttl <= 3600):  # also refuses NaN
        raise ConfigError(message=f"--ttl must be more than 0 and at most 3600 seconds, got {args.ttl:g}")
    token = node.mint_peer_token(peer.node_id, scopes, method=args.method, path_qs=args.path,
                                 ttl_ms=max(1, int(args.ttl * 1000)))
    _emit(args, {"token": token, "peer": peer.node_id, "scopes": list(scopes)}, lambda d: d["token"])
    return EXIT_OK


def cmd_token_inspect(args: argparse.Namespace) -> int:
    from stigmem_node import tokens

    token = sys.stdin.read().strip() if args.token == "-" else args.token
    report = tokens.inspect(token, now_ms=int(time.time() * 1000))

    def human(r: dict) -> str:
        lines = ["header: " + json.dumps(r["header"], sort_keys=True), "claims: " + json.dumps(r["claims"], sort_keys=True)]
        claims = r["claims"] if isinstance(r["claims"], dict) else {}
        for name in ("iat", "exp", "nbf"):
            if isinstance(claims.get(name), int) and not isinstance(claims.get(name), bool):
                try:
                    lines.append(f"{name}: {iso(datetime.fromtimestamp(claims[name] / 1000, tz=timezone.utc))}")
                except (OverflowError, OSError, ValueError):
                    pass
        if r["problems"]:
            lines += [f"problem: {p['code']}: {p['message']}" for p in r["problems"]]
        else:
            lines.append("no problem found (the signature is checked only by the node it is sent to)")
        return "\n".join(lines)

    _emit(args, report, human)
    return EXIT_OK if not report["problems"] else EXIT_FAIL


# -- facts ----------------------------------------------------------------------------
def cmd_facts_add(args: argparse.Namespace) -> int:
    node = _node(args)
    from stigmem_node.facts import value_from_text

    value = value_from_text(args.type, args.value)  # the same JSON value the HTTP API takes
    body = {"entity": args.entity, "relation": args.relation, "value": {"type": args.type, "v": value},
            "source": args.source, "scope": args.scope, "confidence": args.confidence}
    if args.valid_until:
        body["valid_until"] = args.valid_until
    (stored,) = node.facts.assert_many([node.facts.validate_one(body)])
    _emit(args, stored.fact, lambda f: f"{'Stored' if stored.created else 'Already stored'} {f['id']} "
                                       f"(seq {f['seq']}, {f['scope']}, {f['cid']})")
    return EXIT_OK


def cmd_facts_list(args: argparse.Namespace) -> int:
    node = _node(args)
    facts, _, _ = node.facts.query(cursor=None, limit=args.limit, entity=args.entity, relation=args.relation,
                                   scope=args.scope, source=None)

    def human(fs: list[dict]) -> str:
        if not fs:
            return "No facts."
        rows = [[str(f["seq"]), f["scope"], f["entity"], f["relation"], json.dumps(f["value"]["v"])[:60],
                 f["received_from"] or "local"] for f in fs]
        return _table(rows, ["SEQ", "SCOPE", "ENTITY", "RELATION", "VALUE", "FROM"])

    _emit(args, facts, human)
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--db", help="SQLite database file (env STIGMEM_DB_PATH, default ./stigmem.db)")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    parser = Parser(prog="stigmem-node", description="A federated knowledge-node peer server.")
    parser.add_argument("--version", action="version", version=f"stigmem-node {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", parents=[common], help="run the node")
    p.add_argument("--host", help="address to bind (env STIGMEM_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (env STIGMEM_PORT, default 8765)")
    p.add_argument("--node-url", help="public URL of this node (env STIGMEM_NODE_URL, default http://HOST:PORT)")
    p.add_argument("--pull-interval", type=float, help="seconds between pulls from peers (0: off)")
    p.add_argument("--allow-insecure-http", action="store_true", help="allow plain http to non-loopback peers")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--trusted-proxies", help="comma-separated addresses whose X-Forwarded-For is believed "
                                              "(env STIGMEM_TRUSTED_PROXIES; default: none)")
    p.add_argument("--request-timeout", type=float, help="seconds within which a whole request must arrive "
                                                         "(env STIGMEM_REQUEST_TIMEOUT_S, default 30)")
    p.add_argument("--max-connections", type=int, help="open connections served at once; more get 503 "
                                                       "(env STIGMEM_MAX_CONNECTIONS, default 1000)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("init", parents=[common], help="create the database, identity and first admin key, without serving")
    p.add_argument("--node-url", help="public URL of this node (env STIGMEM_NODE_URL)")
    p.add_argument("--host", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("demo", help="two nodes on loopback, federated end to end, in a few seconds")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("pull", parents=[common], help="pull once from every active peer (for cron); exit 1 if any failed")
    p.add_argument("--peer", help="only this peer (peer id or node id)")
    p.add_argument("--allow-insecure-http", action="store_true", help="allow plain http to non-loopback peers")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("info", parents=[common], help="show node id, url, key, fingerprint and declaration")
    p.set_defaults(func=cmd_info)

    peers = sub.add_parser("peers", help="manage peers").add_subparsers(dest="peers_command", required=True,
                                                                        metavar="ACTION")
    p = peers.add_parser("add", parents=[common], help="fetch, verify and register a peer")
    p.add_argument("url", help="the peer's node URL")
    p.add_argument("--scopes", help="scopes to allow this peer, comma-separated (default: all it declares)")
    p.add_argument("--declaration", help="a JSON file with the peer's signed declaration (for nodes that do not publish one)")
    p.add_argument("--allow-insecure-http", action="store_true", help="allow plain http to a non-loopback peer")
    p.set_defaults(func=cmd_peers_add)
    p = peers.add_parser("list", parents=[common], help="list peers")
    p.add_argument("--status", choices=["pending_approval", "active", "suspended", "revoked", "rejected"])
    p.set_defaults(func=cmd_peers_list)
    p = peers.add_parser("show", parents=[common], help="show one peer with its history")
    p.add_argument("peer", help="peer id or node id")
    p.set_defaults(func=cmd_peers_show)
    p = peers.add_parser("approve", parents=[common], help="approve a pending peer by its key fingerprint")
    p.add_argument("peer", help="peer id or node id")
    p.add_argument("--fingerprint", required=True, help="sha256:… as confirmed with the peer's operator")
    p.set_defaults(func=cmd_peers_approve)
    for name, verb, help_text in [("suspend", "Suspended", "stop serving and pulling a peer for now"),
                                  ("resume", "Resumed", "resume a suspended peer"),
                                  ("revoke", "Revoked", "revoke a peer for good")]:
        p = peers.add_parser(name, parents=[common], help=help_text)
        p.add_argument("peer", help="peer id or node id")
        p.add_argument("--reason", help="why (kept in the audit trail)")
        p.set_defaults(func=_peer_action(name, verb))
    p = peers.add_parser("refresh", parents=[common],
                         help="re-read a peer's well-known and follow an endorsed key rotation")
    p.add_argument("peer", help="peer id or node id")
    p.add_argument("--allow-insecure-http", action="store_true", help="allow plain http to a non-loopback peer")
    p.set_defaults(func=cmd_peers_refresh)
    p = peers.add_parser("remove", parents=[common], help="delete a rejected or revoked peer so it can register again")
    p.add_argument("peer", help="peer id or node id")
    p.add_argument("--reason", help="why (kept in the audit trail)")
    p.set_defaults(func=cmd_peers_remove)

    audit = sub.add_parser("audit", help="read and verify the audit trail").add_subparsers(
        dest="audit_command", required=True, metavar="ACTION")
    filt = Parser(add_help=False)
    filt.add_argument("--peer", help="peer id or node id")
    filt.add_argument("--event-type")
    filt.add_argument("--since", help="RFC 3339 time")
    filt.add_argument("--until", help="RFC 3339 time")
    p = audit.add_parser("list", parents=[common, filt], help="list audit entries, oldest first")
    p.add_argument("--limit", type=LIMIT, default=100)
    p.set_defaults(func=cmd_audit_list)
    p = audit.add_parser("tail", parents=[common], help="the newest entries")
    p.add_argument("-n", type=LIMIT, default=20)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    p.add_argument("--interval", type=positive_float, default=1.0)
    p.set_defaults(func=cmd_audit_tail)
    p = audit.add_parser("verify", parents=[common],
                         help="check the chain and its checkpoints (read only); exit 1 if broken")
    p.add_argument("--anchor", metavar="FILE", help="also check that the trail still holds this anchor (- for stdin)")
    p.set_defaults(func=cmd_audit_verify)
    p = audit.add_parser("anchor", parents=[common],
                         help="print the trail's head signed by the node key, to keep elsewhere")
    p.add_argument("--out", metavar="FILE", help="write it to FILE instead (replaced atomically; - for stdout)")
    p.set_defaults(func=cmd_audit_anchor)
    p = audit.add_parser("export", parents=[common, filt], help="every entry as JSON lines")
    p.add_argument("--out", help="file to write (default stdout)")
    p.set_defaults(func=cmd_audit_export)

    keys = sub.add_parser("apikey", help="operator API keys").add_subparsers(dest="apikey_command", required=True,
                                                                             metavar="ACTION")
    p = keys.add_parser("create", parents=[common], help="create a key (printed once)")
    p.add_argument("--permissions", required=True, help=f"comma-separated: {', '.join(PERMISSIONS)}, or all")
    p.add_argument("--label")
    p.add_argument("--expires-in-days", type=EXPIRES_IN_DAYS)
    p.set_defaults(func=cmd_apikey_create)
    p = keys.add_parser("list", parents=[common], help="list keys (never the secrets)")
    p.set_defaults(func=cmd_apikey_list)
    p = keys.add_parser("revoke", parents=[common], help="revoke a key by id")
    p.add_argument("id")
    p.set_defaults(func=cmd_apikey_revoke)
    signing = sub.add_parser("keys", help="the node's signing keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION")
    p = signing.add_parser("rotate", parents=[common], help="make a new signing key; the old one verifies for --grace")
    p.add_argument("--grace", type=float, default=24.0, help="hours the old key keeps verifying (default 24)")
    p.set_defaults(func=cmd_keys_rotate)

    tok = sub.add_parser("token", help="peer tokens, for debugging a federation").add_subparsers(
        dest="token_command", required=True, metavar="ACTION")
    p = tok.add_parser("mint", parents=[common], help="mint a single-use token for one request to a peer")
    p.add_argument("--peer", required=True, help="peer id or node id")
    p.add_argument("--scopes", help="comma-separated (default: the scopes granted to the peer)")
    p.add_argument("--ttl", type=float, default=60.0, help="lifetime in seconds (max 3600)")
    p.add_argument("--method", help="bind the token to this HTTP method (htm)")
    p.add_argument("--path", help="bind the token to this path and query (htu)")
    p.set_defaults(func=cmd_token_mint)
    p = tok.add_parser("inspect", parents=[common], help="decode a token and explain what is wrong with it")
    p.add_argument("token", help="the token, or - to read it from standard input")
    p.set_defaults(func=cmd_token_inspect)

    fac = sub.add_parser("facts", help="this node's facts").add_subparsers(dest="facts_command", required=True,
                                                                           metavar="ACTION")
    p = fac.add_parser("add", parents=[common], help="assert a fact")
    p.add_argument("entity")
    p.add_argument("relation")
    p.add_argument("value", help="the value as text: true or false for boolean, a JSON number for number, "
                                 "null for null")
    p.add_argument("--type", default="string", choices=["string", "text", "number", "boolean", "datetime", "ref", "null"])
    p.add_argument("--scope", default="local", choices=["local", "team", "company", "public"])
    p.add_argument("--source", default="cli")
    p.add_argument("--confidence", type=float, default=1.0)
    p.add_argument("--valid-until", help="RFC 3339 time")
    p.set_defaults(func=cmd_facts_add)
    p = fac.add_parser("list", parents=[common], help="list facts, oldest first")
    p.add_argument("--entity")
    p.add_argument("--relation")
    p.add_argument("--scope", choices=["local", "team", "company", "public"])
    p.add_argument("--limit", type=LIMIT, default=50)
    p.set_defaults(func=cmd_facts_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"stigmem-node: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except StigmemError as exc:
        print(f"stigmem-node: {exc.message} ({exc.code})", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_FAIL
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        # A bug, not an expected error: one line and a distinct exit code instead of a
        # traceback; STIGMEM_DEBUG=1 shows the traceback for a report.
        if os.environ.get("STIGMEM_DEBUG"):
            raise
        print(f"stigmem-node: internal error ({type(exc).__name__}); please report it "
              "(STIGMEM_DEBUG=1 shows the details)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
