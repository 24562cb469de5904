"""``token``: mint and inspect peer tokens, for debugging a federation."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

import click

from stigmem_node.cli._click import Arg, command, group
from stigmem_node.cli._common import EXIT_FAIL, EXIT_OK, Globals, emit, open_node
from stigmem_node.clock import iso
from stigmem_node.config import parse_scopes
from stigmem_node.errors import ConfigError

token = group("token", help="peer tokens, for debugging a federation")


@command(token, "mint", help="mint a single-use token for one request to a peer")
@click.option("--peer", required=True, help="peer id or node id")
@click.option("--scopes", help="comma-separated (default: the scopes granted to the peer)")
@click.option("--ttl", type=float, default=60.0, help="lifetime in seconds (max 3600)")
@click.option("--method", help="bind the token to this HTTP method (htm)")
@click.option("--path", help="bind the token to this path and query (htu)")
def cmd_token_mint(g: Globals, *, peer: str, scopes: str | None, ttl: float, method: str | None,
                   path: str | None) -> int:
    node = open_node(g)
    record = node.federation.get(peer)
    granted = parse_scopes(scopes) if scopes else record.allowed_scopes
    if not (0 < ttl <= 3600):  # also refuses NaN
        raise ConfigError(message=f"--ttl must be more than 0 and at most 3600 seconds, got {ttl:g}")
    minted = node.mint_peer_token(record.node_id, granted, method=method, path_qs=path, ttl_ms=max(1, int(ttl * 1000)))
    data: dict[str, Any] = {"token": minted, "peer": record.node_id, "scopes": list(granted)}
    emit(g, data, lambda d: str(d["token"]))
    return EXIT_OK


@command(token, "inspect", help="decode a token and explain what is wrong with it")
@click.argument("text", cls=Arg, metavar="TOKEN", help="the token, or - to read it from standard input")
def cmd_token_inspect(g: Globals, *, text: str) -> int:
    from stigmem_node import token_inspect

    raw = sys.stdin.read().strip() if text == "-" else text
    report = token_inspect.inspect(raw, now_ms=int(time.time() * 1000))

    def human(r: dict[str, Any]) -> str:
        lines = ["header: " + json.dumps(r["header"], sort_keys=True),
                 "claims: " + json.dumps(r["claims"], sort_keys=True)]
        claims = r["claims"] if isinstance(r["claims"], dict) else {}
        for name in ("iat", "exp", "nbf"):
            if isinstance(claims.get(name), int) and not isinstance(claims.get(name), bool):
                try:
                    lines.append(f"{name}: {iso(datetime.fromtimestamp(claims[name] / 1000, tz=UTC))}")
                except (OverflowError, OSError, ValueError):
                    pass
        if r["problems"]:
            lines += [f"problem: {p['code']}: {p['message']}" for p in r["problems"]]
        else:
            lines.append("no problem found (the signature is checked only by the node it is sent to)")
        return "\n".join(lines)

    emit(g, report, human)
    return EXIT_OK if not report["problems"] else EXIT_FAIL
