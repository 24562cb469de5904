"""GET /v1/federation/audit: filtered, cursor-paginated audit entries."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from stigmem_node.audit import entry_dict
from stigmem_node.errors import ValidationError
from stigmem_node.http.auth import require
from stigmem_node.http.params import int_param, time_param


async def audit_list(request: Request) -> JSONResponse:
    require(request, "audit:read")
    q = request.query_params
    limit = int_param(request, "limit", 50, 1, 500)
    order = q.get("order", "asc")
    if order not in ("asc", "desc"):
        raise ValidationError("invalid_request", "order must be asc or desc", field="order")
    cursor_raw = q.get("cursor")
    cursor = None
    if cursor_raw is not None:
        if not (cursor_raw.isascii() and cursor_raw.isdigit()) or len(cursor_raw) > 18:
            raise ValidationError("invalid_cursor", "cursor must be a value returned by this endpoint", field="cursor")
        cursor = int(cursor_raw)
    peer_ref = q.get("peer_id") or q.get("peer")
    peer_id = None
    if peer_ref:
        peer = request.app.state.node.store.peers.by_node_id(peer_ref)
        peer_id = peer.id if peer else peer_ref
    repo = request.app.state.node.store.audit
    rows = repo.page(
        after=cursor if (cursor is not None and order == "asc") else 0,
        before=cursor if (cursor is not None and order == "desc") else None,
        limit=limit + 1, peer_id=peer_id, event_type=q.get("event_type"),
        since=time_param(request, "since"), until=time_param(request, "until"), descending=order == "desc",
    )
    has_more = len(rows) > limit
    rows = rows[:limit]
    return JSONResponse({
        "entries": [entry_dict(r) for r in rows],
        "cursor": str(rows[-1].seq) if rows else cursor_raw,
        "has_more": has_more,
    })
