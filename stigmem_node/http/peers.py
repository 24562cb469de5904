"""/v1/federation/peers: register, list, show, approve, suspend, resume, revoke, remove.

Lists and views run in the read lane, changes in the write lane (``stigmem_node.offload``)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from stigmem_node.config import parse_scopes
from stigmem_node.errors import ConfigError, ValidationError
from stigmem_node.federation import peer_view
from stigmem_node.http.auth import actor, require
from stigmem_node.vocabulary import PEER_STATUSES


async def json_body(request: Request, *, required: bool = True) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        if required:
            raise ValidationError("invalid_json", "a JSON object body is required")
        return {}
    try:
        body = json.loads(raw)
        # Refuse unpaired surrogates (``"\ud800"``): no later layer could store them.  In
        # UTF-8 text only a \u escape or the bytes of an encoded surrogate (ED A0-BF, which
        # json.loads lets through) can make one: without those, nothing to check.
        if b"\\u" in raw or b"\xed" in raw or json.detect_encoding(raw) != "utf-8":
            json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError):
        raise ValidationError("invalid_json", "the body is not valid JSON text in UTF-8") from None
    if not isinstance(body, dict):
        raise ValidationError("invalid_request", "the body must be a JSON object", field="body")
    return body


def _reason(body: dict[str, Any]) -> str | None:
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 500 or "\x00" in reason):
        raise ValidationError("invalid_request", "reason must be a string of at most 500 characters, without NUL",
                              field="reason")
    return reason


async def register(request: Request) -> JSONResponse:
    principal = await require(request, "federate")
    body = await json_body(request)
    scopes = None
    if request.query_params.get("scopes"):
        try:
            scopes = parse_scopes(request.query_params["scopes"])
        except ConfigError as exc:
            raise ValidationError("invalid_scope", exc.message, field="scopes") from None
    peer = await request.app.state.node.federation.register(body, actor=actor(request, principal), scopes=scopes)
    view = peer_view(peer)
    view.update(verified_at=None, reason=peer.reject_reason)
    return JSONResponse(view, status_code=201)


async def list_peers(request: Request) -> JSONResponse:
    await require(request, "federate")
    status = request.query_params.get("status")
    if status is not None and status not in PEER_STATUSES:
        raise ValidationError("invalid_request", f"status must be one of {', '.join(PEER_STATUSES)}", field="status")
    node = request.app.state.node
    fed = node.federation
    return JSONResponse({"peers": await node.lanes.read(lambda: fed.views(fed.list_peers(status)))})


async def show_peer(request: Request) -> JSONResponse:
    principal = await require(request, "federate")
    node = request.app.state.node
    fed = node.federation
    ref = request.path_params["ref"]

    def show() -> dict[str, Any]:
        (view,) = fed.views([fed.get(ref)])
        if "audit:read" in principal.permissions:  # the history is audit data
            view["history"] = fed.history(fed.get(view["peer_id"]))
        return view

    return JSONResponse(await node.lanes.read(show))


async def approve(request: Request) -> JSONResponse:
    principal = await require(request, "admin:federation")
    body = await json_body(request)
    if "pubkey_fingerprint" not in body:
        raise ValidationError("invalid_fingerprint", "pubkey_fingerprint is required", field="pubkey_fingerprint")
    node = request.app.state.node
    peer = await node.lanes.write(node.federation.approve, request.path_params["ref"], body["pubkey_fingerprint"],
                                  actor=actor(request, principal))
    return JSONResponse(peer_view(peer))


def _action(name: str):
    async def endpoint(request: Request) -> JSONResponse:
        principal = await require(request, "admin:federation")
        body = await json_body(request, required=False)
        node = request.app.state.node
        method = getattr(node.federation, name)
        peer = await node.lanes.write(method, request.path_params["ref"], actor=actor(request, principal),
                                      reason=_reason(body))
        return JSONResponse(peer_view(peer))

    endpoint.__name__ = name
    return endpoint


suspend = _action("suspend")
resume = _action("resume")
revoke = _action("revoke")


async def remove(request: Request) -> JSONResponse:
    principal = await require(request, "admin:federation")
    reason = _reason({"reason": request.query_params.get("reason")})
    node = request.app.state.node
    peer = await node.lanes.write(node.federation.remove, request.path_params["ref"],
                                  actor=actor(request, principal), reason=reason)
    return JSONResponse({**peer_view(peer), "removed": True})
