"""Query-string parameters, checked the same way on every endpoint."""

from __future__ import annotations

from starlette.requests import Request

from stigmem_node.clock import iso, parse_rfc3339
from stigmem_node.errors import ValidationError
from stigmem_node.vocabulary import SCOPES


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # isascii: str.isdigit() accepts characters such as "²" that int() refuses; the length
    # bound keeps int() away from Python's limit on digit strings.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or not lo <= int(raw) <= hi:
        raise ValidationError("invalid_request", f"{name} must be a whole number from {lo} to {hi}", field=name)
    return int(raw)


def bool_param(request: Request, name: str, default: bool = False) -> bool:
    """``true`` or ``false``, exactly: anything else (``1``, ``yes``, ``True``, empty) is
    refused rather than guessed at."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise ValidationError("invalid_request", f"{name} must be true or false", field=name)
    return raw == "true"


def time_param(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return iso(parse_rfc3339(raw))
    except ValueError:
        raise ValidationError("invalid_request", f"{name} must be an RFC 3339 timestamp", field=name) from None


def scope_param(request: Request) -> str | None:
    scope = request.query_params.get("scope")
    if scope is not None and scope not in SCOPES:
        raise ValidationError("invalid_scope", f"scope must be one of {', '.join(SCOPES)}", field="scope")
    return scope
