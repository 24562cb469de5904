"""``info``: what an operator shows the operators of other nodes."""

from __future__ import annotations

import json
from typing import Any

from stigmem_node.cli._click import command, root
from stigmem_node.cli._common import EXIT_OK, Globals, emit, open_node


def _human(i: dict[str, Any]) -> str:
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


@command(root, "info", help="show node id, url, key, fingerprint and declaration")
def cmd_info(g: Globals) -> int:
    node = open_node(g)
    emit(g, node.info(), _human)
    return EXIT_OK
