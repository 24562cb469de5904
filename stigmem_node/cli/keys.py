"""``keys``: the node's own signing keys."""

from __future__ import annotations

from datetime import timedelta

import click

from stigmem_node.cli._click import command, group
from stigmem_node.cli._common import EXIT_OK, Globals, cli_actor, emit, open_node
from stigmem_node.errors import ConfigError

keys = group("keys", help="the node's signing keys")


@command(keys, "rotate", help="make a new signing key; the old one verifies for --grace")
@click.option("--grace", type=float, default=24.0, help="hours the old key keeps verifying (default 24)")
def cmd_keys_rotate(g: Globals, *, grace: float) -> int:
    if not 0 <= grace <= 24 * 30:  # also refuses NaN
        raise ConfigError(message=f"--grace must be between 0 and 720 hours, got {grace:g}")
    node = open_node(g)
    result = node.rotate_key(timedelta(hours=grace), actor=cli_actor().name)
    emit(g, result, lambda r: (
        f"New signing key {r['key_id']} (fingerprint {r['pubkey_fingerprint']}).\n"
        f"The old key {r['old_key_id']} still verifies until {r['old_key_verifies_until']}; "
        f"{r['facts_resigned']} facts re-signed. A running server adopts the new key within seconds.\n"
        "Peers running this software follow the rotation by themselves; tell the operators of other "
        "peers the new fingerprint."))
    return EXIT_OK
