"""GET /v1/federation/audit: filtered, cursor-paginated audit entries."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from stigmem_node.audit_query import AuditPage
from stigmem_node.errors import ValidationError
from stigmem_node.http.auth import require
from stigmem_node.http.params import int_param, time_param


async def audit_list(request: Request) -> JSONResponse:
    await require(request, "audit:read")
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
    node = request.app.state.node
    query = node.audit_query
    peer, event_type = q.get("peer_id") or q.get("peer"), q.get("event_type")
    since, until = time_param(request, "since"), time_param(request, "until")

    def read() -> AuditPage:
        where = query.where(peer=peer, event_type=event_type, since=since, until=until)
        return query.page(where, cursor=cursor, limit=limit, descending=order == "desc")

    page = await node.lanes.read(read)
    return JSONResponse({
        "entries": page.entries,
        "cursor": str(page.entries[-1]["seq"]) if page.entries else cursor_raw,
        "has_more": page.has_more,
    })
