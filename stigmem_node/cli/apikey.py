"""``apikey``: create, list and revoke operator API keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from stigmem_node.apikeys import key_public_dict
from stigmem_node.cli._click import EXPIRES_IN_DAYS, Arg, command, group
from stigmem_node.cli._common import EXIT_OK, Globals, cli_actor, emit, open_node, table
from stigmem_node.clock import iso
from stigmem_node.vocabulary import PERMISSIONS

apikey = group("apikey", help="operator API keys")


@command(apikey, "create", help="create a key (printed once)")
@click.option("--permissions", required=True, help=f"comma-separated: {', '.join(PERMISSIONS)}, or all")
@click.option("--label", help="a note to recognise the key by")
@click.option("--expires-in-days", type=EXPIRES_IN_DAYS, help="days until the key expires (default: never)")
def cmd_apikey_create(g: Globals, *, permissions: str, label: str | None, expires_in_days: int | None) -> int:
    node = open_node(g)
    key, rec = node.operator_keys.create(permissions, label=label, expires_in_days=expires_in_days,
                                         actor=cli_actor().name)
    data = {**key_public_dict(rec), "key": key}
    emit(g, data, lambda d: f"{d['key']}\n(shown once; permissions: {', '.join(d['permissions'])})")
    return EXIT_OK


@command(apikey, "list", help="list keys (never the secrets)")
def cmd_apikey_list(g: Globals) -> int:
    node = open_node(g)
    keys = [key_public_dict(r) for r in node.operator_keys.records()]

    def human(ks: list[dict[str, Any]]) -> str:
        if not ks:
            return "No API keys."
        now = iso(datetime.now(UTC))
        def state(k: dict[str, Any]) -> str:
            if k["revoked_at"]:
                return "revoked"
            return "expired" if k["expires_at"] and k["expires_at"] <= now else "active"

        rows = [[k["prefix"] + "…", ",".join(k["permissions"]), k["label"] or "", k["created_at"][:19], state(k),
                 (k["last_used_at"] or "never")[:19]] for k in ks]
        return table(rows, ["KEY", "PERMISSIONS", "LABEL", "CREATED", "STATE", "LAST USED"])

    emit(g, keys, human)
    return EXIT_OK


@command(apikey, "revoke", help="revoke a key by id")
@click.argument("key_id", cls=Arg, metavar="ID", help="the key's id (or the whole key)")
def cmd_apikey_revoke(g: Globals, *, key_id: str) -> int:
    node = open_node(g)
    rec, changed = node.operator_keys.revoke(key_id, actor=cli_actor().name)
    emit(g, key_public_dict(rec), lambda d: f"{'Revoked' if changed else 'Already revoked:'} API key {d['prefix']}…")
    return EXIT_OK
