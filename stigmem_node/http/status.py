"""GET /status: the operator's status page, with sign-in, sign-out and peer actions.

- ``GET /status``: the page for a signed-in operator, else the sign-in form.
- ``POST /status/session``: sign in with an API key in the form body (never in a URL); the
  key must hold ``audit:read`` or ``admin:federation``.  Failures count against the same
  per-address limiter as API-key authentication (``http.auth.authenticate``).
- ``POST /status/session/end``: sign out.
- ``POST /status/peers/{peer_id}/{approve|suspend|resume}``: ``admin:federation`` only;
  through the same use cases as the API, audited with the session's key as the actor.

Every POST after sign-in carries the session's CSRF token; an ``Origin`` header, when
sent, must be this node's.  Sessions: ``stigmem_node.sessions``.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from stigmem_node.errors import Conflict, Forbidden, NotFound, StigmemError, Unauthorized, ValidationError
from stigmem_node.federation import Actor
from stigmem_node.http.auth import authenticate, client_addr
from stigmem_node.http.status_html import FLASH_MESSAGES, sign_in, status_page
from stigmem_node.sessions import MAX_AGE_S, Session, csrf_ok

COOKIE = "stigmem_status"
SIGN_IN_COOKIE = "stigmem_status_signin"
READ_PERMISSIONS = ("audit:read", "admin:federation")
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
MAX_FORM_BYTES = 16 * 1024
ACTIONS = ("approve", "suspend", "resume")


def _html(body: str, status_code: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code, headers={**SECURITY_HEADERS, **(headers or {})})


def _redirect(flash: str | None = None) -> RedirectResponse:
    return RedirectResponse("/status" + (f"?flash={flash}" if flash else ""), status_code=303,
                            headers=SECURITY_HEADERS)


async def _session(request: Request) -> Session | None:
    node = request.app.state.node
    return await node.lanes.write(node.sessions.resolve, request.cookies.get(COOKIE))  # type: ignore[no-any-return]


async def _form(request: Request) -> dict[str, str]:
    """The url-encoded form body (first value of each field)."""
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        raise ValidationError("invalid_request", "the form is too large", field="body")
    try:
        fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=20, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise ValidationError("invalid_request", "the form body is not url-encoded UTF-8", field="body") from None
    form = {k: v[0] for k, v in fields.items() if v}
    if any("\x00" in k or "\x00" in v for k, v in form.items()):
        raise ValidationError("invalid_request", "a form field holds NUL", field="body")
    return form


def _same_origin(request: Request) -> bool:
    """No Origin header (or ``null``), or one naming this node: as the browser reached it, or
    as its node URL says.  A second barrier only: the CSRF tokens are the defence."""
    origin = request.headers.get("origin")
    if origin is None or origin.strip() == "null":  # under Referrer-Policy no-referrer, browsers send "null"
        return True
    own = {f"{request.url.scheme}://{request.url.netloc}".lower()}
    url = urlsplit(request.app.state.node.identity.node_url)
    own.add(f"{url.scheme}://{url.netloc}".lower())
    return origin.strip().lower() in own


def _csrf_checked(request: Request, session: Session, form: dict[str, str]) -> None:
    if not _same_origin(request) or not csrf_ok(session, form.get("csrf")):
        raise Forbidden("csrf_failed", "the form's CSRF token is missing or wrong, or it came from another origin")


def _sign_in_form(request: Request, message: str | None = None, status_code: int = 200,
                  headers: dict[str, str] | None = None) -> HTMLResponse:
    """The sign-in form, with a fresh token both in a hidden field and in a SameSite=Strict
    cookie: a sign-in posted from another site lacks the cookie and is refused."""
    token = secrets.token_hex(32)
    response = _html(sign_in(token, message), status_code, headers)
    response.set_cookie(SIGN_IN_COOKIE, token, max_age=3600, path="/status", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


async def page(request: Request) -> Response:
    session = await _session(request)
    if session is None:
        return _sign_in_form(request)
    node = request.app.state.node
    audit_allowed = "audit:read" in session.permissions
    report = await node.lanes.read(lambda: node.status.report(with_audit=audit_allowed))
    flash = request.query_params.get("flash")
    return _html(status_page(report, key_id=session.key_id, csrf=session.csrf_token,
                             admin="admin:federation" in session.permissions, audit_allowed=audit_allowed,
                             flash=flash if flash in FLASH_MESSAGES else None))


async def sign_in_post(request: Request) -> Response:
    form = await _form(request)
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    given = form.get("csrf", "")
    if not _same_origin(request) or not expected or not hmac.compare_digest(
            given.encode("utf-8", "replace"), expected.encode("utf-8", "replace")):
        raise Forbidden("csrf_failed", "the sign-in form's token is missing or wrong, or it came from another origin")
    try:
        principal = await authenticate(request, form.get("api_key"))
    except Unauthorized:
        return _sign_in_form(request, "That API key is not valid.", 401)
    except StigmemError as exc:
        if exc.code != "too_many_failed_attempts":
            raise
        return _sign_in_form(request, "Too many failed sign-ins from this address; retry later.", 429,
                             {"Retry-After": str(exc.retry_after or 60)})
    if not any(p in principal.permissions for p in READ_PERMISSIONS):
        return _sign_in_form(request, "That API key holds neither audit:read nor admin:federation.", 403)
    node = request.app.state.node
    session_id = await node.lanes.write(node.sessions.open, principal)
    response = _redirect()
    response.delete_cookie(SIGN_IN_COOKIE, path="/status", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    response.set_cookie(COOKIE, session_id, max_age=MAX_AGE_S, path="/status", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


async def sign_out(request: Request) -> Response:
    session = await _session(request)
    if session is not None:
        _csrf_checked(request, session, await _form(request))
        node = request.app.state.node
        await node.lanes.write(node.sessions.close, request.cookies.get(COOKIE))
    response = _redirect("signed_out")
    response.delete_cookie(COOKIE, path="/status", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response


async def peer_action(request: Request) -> Response:
    session = await _session(request)
    if session is None:
        raise Unauthorized("session_required", "sign in on the status page first")
    form = await _form(request)
    _csrf_checked(request, session, form)
    if "admin:federation" not in session.permissions:
        raise Forbidden("permission_required", "this session's API key lacks the admin:federation permission",
                        permission="admin:federation")
    action = request.path_params["action"]
    if action not in ACTIONS:
        raise NotFound("not_found", "no such endpoint")
    node = request.app.state.node
    fed = node.federation
    who = Actor(session.principal.actor, client_addr(request))
    ref = request.path_params["peer_id"]
    try:
        if action == "approve":
            await node.lanes.write(fed.approve, ref, form.get("fingerprint", ""), actor=who)
            return _redirect("approved")
        if action == "suspend":
            await node.lanes.write(fed.suspend, ref, actor=who)
            return _redirect("suspended")
        await node.lanes.write(fed.resume, ref, actor=who)
        return _redirect("resumed")
    except (Conflict, ValidationError) as exc:
        if exc.code in FLASH_MESSAGES:
            return _redirect(exc.code)
        raise
