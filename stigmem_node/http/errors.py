"""Map domain errors to HTTP.  This is the only place that knows status codes.

Every error body is ``{"error": code, "detail": code, "message": sentence}`` (``detail``
mirrors the code for clients of the reference node), plus context fields where useful.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from stigmem_node.errors import (
    Conflict, ConfigError, Forbidden, NotFound, OutboundError, StigmemError, Unauthorized, ValidationError,
)

log = logging.getLogger("stigmem_node.http")

# Codes whose status differs from their class default.
STATUS_BY_CODE = {
    "database_busy": 503,
    "invalid_json": 400,
    "fingerprint_mismatch": 400,
    "body_too_large": 413,
    "too_many_failed_attempts": 429,
}
STATUS_BY_CLASS: list[tuple[type, int]] = [
    (ValidationError, 422), (NotFound, 404), (Conflict, 409), (Forbidden, 403), (Unauthorized, 401),
    (OutboundError, 502), (ConfigError, 500),
]


def error_response(http_status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    body = {"error": code, "detail": code, "message": message}
    body.update({k: v for k, v in extra.items() if v is not None and k not in body})
    return JSONResponse(body, status_code=http_status, headers=headers)


def status_for(exc: StigmemError) -> int:
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    if exc.code in STATUS_BY_CODE:
        return STATUS_BY_CODE[exc.code]
    for cls, st in STATUS_BY_CLASS:
        if isinstance(exc, cls):
            return st
    return 400


async def stigmem_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StigmemError)
    extra = dict(exc.extra)
    headers = extra.pop("headers", None)
    if exc.code == "database_busy":
        headers = {"Retry-After": "1"}
    if isinstance(exc, ValidationError) and exc.field:
        extra["field"] = exc.field
    return error_response(status_for(exc), exc.code, exc.message, headers=headers, **extra)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "body_too_large"}


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = {"not_found": "no such endpoint", "method_not_allowed": "method not allowed on this endpoint"}.get(
        code, str(exc.detail)
    )
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # This handler runs outside the request-id middleware, so it sets the header itself.
    rid = request.scope.get("state", {}).get("request_id", "")
    log.exception("unexpected error on %s %s (request %s)", request.method, request.url.path, rid)
    return error_response(500, "internal_error", "the node hit an unexpected error; it has been logged",
                          headers={"X-Request-Id": rid} if rid else None)
