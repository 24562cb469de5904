"""Map domain errors to HTTP.  This is the only place that turns an error into a status
code and headers; both come from the registry (``stigmem_node.error_codes``).

Every error body is ``{"error": code, "detail": code, "message": sentence}`` (``detail``
mirrors the code for clients of the reference node), plus context fields where useful.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from stigmem_node import error_codes
from stigmem_node.errors import StigmemError, ValidationError

log = logging.getLogger("stigmem_node.http")

# Framework-level HTTP errors (routing, request parsing) with a code of their own; any other
# status the framework raises is ``http_error`` with that status.
_FRAMEWORK_CODES = {error_codes.http_status(code): code
                    for code in ("not_found", "method_not_allowed", "bad_request", "body_too_large")}
_FRAMEWORK_MESSAGES = {"not_found": "no such endpoint", "method_not_allowed": "method not allowed on this endpoint"}


def error_response(http_status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    body = {"error": code, "detail": code, "message": message}
    body.update({k: v for k, v in extra.items() if v is not None and k not in body})
    return JSONResponse(body, status_code=http_status, headers=headers)


def status_for(exc: StigmemError) -> int:
    """The registry's status for the error's code.  A code that is not in the registry, or is
    not an HTTP answer there, is a bug: 500, logged (tests/test_error_codes.py keeps the
    source free of such codes)."""
    entry = error_codes.lookup(exc.code)
    if entry is None or entry.status is None:
        log.error("error code %r %s; answering 500", exc.code,
                  "is not in the registry" if entry is None else "is not an HTTP error code")
        return 500
    return entry.status


def retry_after_for(exc: StigmemError) -> int | None:
    """Seconds for ``Retry-After``: the error's own wait, else its code's fixed one."""
    if exc.retry_after is not None:
        return exc.retry_after
    entry = error_codes.lookup(exc.code)
    return entry.retry_after if entry is not None else None


async def stigmem_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StigmemError):  # registered for StigmemError only
        raise TypeError(f"not a StigmemError: {type(exc).__name__}")
    extra = dict(exc.extra)
    retry_after = retry_after_for(exc)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if exc.retry_after is not None:
        extra["retry_after"] = exc.retry_after  # an error's own wait is also in the body
    if isinstance(exc, ValidationError) and exc.field:
        extra["field"] = exc.field
    return error_response(status_for(exc), exc.code, exc.message, headers=headers, **extra)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, HTTPException):  # registered for HTTPException only
        raise TypeError(f"not an HTTPException: {type(exc).__name__}")
    code = _FRAMEWORK_CODES.get(exc.status_code, "http_error")
    message = _FRAMEWORK_MESSAGES.get(code, str(exc.detail))
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # This handler runs outside the request-id middleware, so it sets the header itself.
    rid = request.scope.get("state", {}).get("request_id", "")
    log.exception("unexpected error on %s %s (request %s)", request.method, request.url.path, rid)
    return error_response(error_codes.http_status("internal_error"), "internal_error",
                          "the node hit an unexpected error; it has been logged",
                          headers={"X-Request-Id": rid} if rid else None)
