"""/v1/admin/apikeys: create, list and revoke operator API keys over HTTP (``admin:keys``).

The handlers check the input's shape and call ``operator_keys.OperatorKeys`` in the write
lane (lists in the read lane), as the ``apikey`` commands do: each change commits with its
audit row.  The two rules that only the API has (no permission escalation; the last
``admin:keys`` key stays) are the use case's (``holder``, ``keep_permission``)."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from stigmem_node.apikeys import key_public_dict
from stigmem_node.clock import iso
from stigmem_node.errors import ValidationError
from stigmem_node.http.auth import client_addr, require
from stigmem_node.http.peers import json_body
from stigmem_node.store.apikeys import ApiKeyRecord
from stigmem_node.vocabulary import PERMISSIONS

ADMIN_KEYS = "admin:keys"
NAME_MAX = 100
MAX_EXPIRES_IN_DAYS = 36_500
_FIELDS = frozenset({"name", "permissions", "expires_in_days"})
_KEY_ID = re.compile(r"[0-9a-f]{12}")


def _name(body: dict[str, Any]) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX or not name.isprintable():
        raise ValidationError("invalid_request", f"name must be a string of 1 to {NAME_MAX} printable characters",
                              field="name")
    return name


def _permissions(body: dict[str, Any]) -> list[str]:
    perms = body.get("permissions")
    if not isinstance(perms, list) or not all(isinstance(p, str) and len(p) <= 64 for p in perms) \
            or len(perms) > 2 * len(PERMISSIONS):
        raise ValidationError("invalid_request", "permissions must be a list of permission names",
                              field="permissions")
    return perms


def _expires_in_days(body: dict[str, Any]) -> int | None:
    days = body.get("expires_in_days")
    if days is None:
        return None
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_EXPIRES_IN_DAYS:
        raise ValidationError("invalid_request", f"expires_in_days must be a whole number from 1 to "
                              f"{MAX_EXPIRES_IN_DAYS}", field="expires_in_days")
    return days


def key_view(rec: ApiKeyRecord, now: str) -> dict[str, Any]:
    """A key as the API shows it: never its secret nor its hash."""
    view = key_public_dict(rec)
    view["name"] = rec.label
    view["state"] = "revoked" if rec.revoked_at else (
        "expired" if rec.expires_at is not None and rec.expires_at <= now else "active")
    return view


async def create_key(request: Request) -> JSONResponse:
    principal = await require(request, ADMIN_KEYS)
    body = await json_body(request)
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise ValidationError("invalid_request", f"unknown field {unknown[0][:40]!r}; the fields are "
                              "name, permissions and expires_in_days", field=unknown[0][:40])
    name, perms, days = _name(body), _permissions(body), _expires_in_days(body)
    node = request.app.state.node
    key, rec = await node.lanes.write(node.operator_keys.create, perms, actor=principal.actor, label=name,
                                      expires_in_days=days, remote_addr=client_addr(request),
                                      holder=principal.permissions)
    return JSONResponse({**key_view(rec, iso(node.clock.now())), "key": key}, status_code=201)


async def list_keys(request: Request) -> JSONResponse:
    await require(request, ADMIN_KEYS)
    node = request.app.state.node
    records = await node.lanes.read(node.operator_keys.records)
    now = iso(node.clock.now())
    return JSONResponse({"keys": [key_view(r, now) for r in records]})


async def revoke_key(request: Request) -> JSONResponse:
    principal = await require(request, ADMIN_KEYS)
    key_id = request.path_params["key_id"]
    if not _KEY_ID.fullmatch(key_id):
        raise ValidationError("invalid_request", "the path names a key by its id: 12 lowercase hex digits",
                              field="id")
    await json_body(request, required=False)  # a body, if any, must be a JSON object (reserved)
    node = request.app.state.node
    rec, changed = await node.lanes.write(node.operator_keys.revoke, key_id, actor=principal.actor,
                                          remote_addr=client_addr(request), keep_permission=ADMIN_KEYS)
    return JSONResponse({**key_view(rec, iso(node.clock.now())), "revoked": changed})
