"""API-key authentication for operator endpoints, with a per-address failure limit."""

from __future__ import annotations

from starlette.requests import Request

from stigmem_node import audit as ev
from stigmem_node.apikeys import Principal
from stigmem_node.errors import Forbidden, StigmemError, Unauthorized
from stigmem_node.federation import Actor


def client_addr(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def require(request: Request, permission: str) -> Principal:
    """The caller's principal if its key is valid and holds ``permission``.

    The key is checked in the read lane (checking only reads: its last use is recorded
    later, in the background).  Every authentication failure gives the same 401; after too
    many from one address the address gets 429 with Retry-After until the window passes.
    """
    principal = await authenticate(request, bearer(request))
    if permission not in principal.permissions:
        raise Forbidden("permission_required", f"this API key lacks the {permission} permission",
                        permission=permission)
    return principal


async def authenticate(request: Request, key: str | None) -> Principal:
    """The principal of ``key`` (from a header or a sign-in form), counting a failure against
    the caller's address and auditing the throttle as ``require`` describes."""
    node = request.app.state.node
    limiter = request.app.state.auth_limiter
    addr = client_addr(request)
    retry = limiter.retry_after(addr)
    if retry is not None:
        raise StigmemError("too_many_failed_attempts", "too many failed authentication attempts; retry later",
                           retry_after=retry)
    try:
        principal: Principal = await node.lanes.read(node.apikeys.authenticate, key)
    except Unauthorized:
        limiter.fail(addr)
        if limiter.retry_after(addr) is not None:
            extra = node.unauth_audit.admit("throttle", addr)  # shared with peer authentication
            if extra is not None:
                await node.lanes.write(node.audit.record, ev.APIKEY_AUTH_THROTTLED, actor="anonymous",
                                       remote_addr=addr, reason="too_many_failed_attempts",
                                       detail={"path": request.url.path[:200], **extra})
        raise
    request.state.actor = principal.actor  # apikey:KEY_ID, for the access log (never the key)
    return principal


def actor(request: Request, principal: Principal) -> Actor:
    return Actor(principal.actor, client_addr(request))
