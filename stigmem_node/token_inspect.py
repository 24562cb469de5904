"""Explain a peer token without verifying it, for ``stigmem-node token inspect``.

Decodes the header and claims leniently for display, then reports every problem
``tokens.verify`` would find that does not need the signature, the peer or the nonce,
with ``verify``'s codes.  Pure: no HTTP, no SQL.
"""

from __future__ import annotations

import json
import time
from typing import Any

from stigmem_node import tokens
from stigmem_node.encoding import b64url_decode, reject_json_constant


def inspect(
    token: str,
    *,
    now_ms: int | None = None,
    our_node_id: str | None = None,
    leeway_ms: int = tokens.DEFAULT_LEEWAY_MS,
    max_lifetime_ms: int = tokens.MAX_LIFETIME_MS,
) -> dict[str, Any]:
    """Decode a token WITHOUT verifying its signature, for ``stigmem-node token inspect``.

    Returns ``{"header": …, "claims": …, "problems": [{"code", "message"}, …]}``.  ``header``
    and ``claims`` are whatever JSON the segments hold (None when a segment does not decode).
    ``problems`` uses ``verify``'s codes: the structural one if any, else every header and
    claim problem relative to ``now_ms`` (default: the wall clock).  The signature, the peer
    and the nonce are not checked.  Never raises on bad input.
    """
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    result: dict[str, Any] = {"header": None, "claims": None, "problems": []}
    problems: list[dict[str, str]] = result["problems"]
    if not isinstance(token, str) or not token.strip():
        problems.append({"code": "peer_token_required", "message": "No token was given."})
        return result
    token = token.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()

    segments = token.split(".")
    if len(segments) >= 2:
        result["header"] = _lenient_json(segments[0])
        result["claims"] = _lenient_json(segments[1])

    try:
        parsed = tokens.parse(token, now_ms)
    except tokens.TokenRejected as exc:
        problems.append({"code": exc.code, "message": exc.message})
        return result
    header_problem = tokens.header_problem(parsed.header)
    if header_problem is not None:
        problems.append({"code": header_problem[0], "message": header_problem[1]})
    for code, message in tokens.claim_problems(
        parsed, our_node_id=our_node_id, now_ms=now_ms, leeway_ms=leeway_ms,
        max_lifetime_ms=max_lifetime_ms, method=None, path_qs=None,
    ):
        problems.append({"code": code, "message": message})
    return result


def _lenient_json(segment: str) -> Any:
    """A segment's JSON value for display (padding tolerated), or None."""
    if len(segment) > tokens.MAX_TOKEN_CHARS:
        return None
    try:
        return json.loads(b64url_decode(segment).decode("utf-8"), parse_constant=reject_json_constant)
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError):
        return None
