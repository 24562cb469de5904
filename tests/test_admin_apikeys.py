"""The admin key API (/v1/admin/apikeys), end to end on real served nodes and both engines:
create, list, revoke, every change audited; no permission escalation; the last admin:keys key
stays; bad input answered 4xx with a stable code, never a 500."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from stigmem_node.vocabulary import PERMISSIONS
from tests.nodes import KEY_RE, ServedNode

KEYS = "/v1/admin/apikeys"


def call(node: ServedNode, key: str, method: str, path: str, **kw: Any) -> httpx.Response:
    with node.client(key) as client:
        return client.request(method, path, **kw)


def create(node: ServedNode, key: str, name: str, permissions: list[str], **extra: Any) -> dict[str, Any]:
    res = call(node, key, "POST", KEYS, json={"name": name, "permissions": permissions, **extra})
    assert res.status_code == 201, res.text
    return res.json()


def audit_rows(node: ServedNode, *types: str) -> list[tuple]:
    rows = node.sql("SELECT event_type, actor, reason, detail, remote_addr FROM audit_log ORDER BY seq")
    return [(t, a, r, json.loads(d), addr) for t, a, r, d, addr in rows if t in types]


def key_id(key: str) -> str:
    return key.split("_")[1]


def test_create_list_revoke_audited_and_the_secret_shown_once(node):
    admin = node.api_key
    made = create(node, admin, "log reader", ["audit:read"], expires_in_days=30)
    assert KEY_RE.fullmatch(made["key"]) and made["key"].startswith(made["prefix"])
    assert made["permissions"] == ["audit:read"] and made["name"] == made["label"] == "log reader"
    assert made["state"] == "active" and made["expires_at"] is not None and made["revoked_at"] is None
    # The new key works, with its permission only.
    assert call(node, made["key"], "GET", "/v1/federation/audit").status_code == 200
    assert call(node, made["key"], "GET", KEYS).json()["error"] == "permission_required"

    listed = call(node, admin, "GET", KEYS)
    assert listed.status_code == 200
    assert made["key"] not in listed.text and made["key"].split("_", 2)[2] not in listed.text
    assert "key_hash" not in listed.text and '"key"' not in listed.text
    views = {k["id"]: k for k in listed.json()["keys"]}
    assert set(views) == {key_id(admin), made["id"]}
    assert views[made["id"]]["prefix"] == made["prefix"] and views[made["id"]]["state"] == "active"
    assert "admin:keys" in views[key_id(admin)]["permissions"]  # the first key has every permission

    revoked = call(node, admin, "POST", f"{KEYS}/{made['id']}/revoke")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked"] is True and revoked.json()["state"] == "revoked"
    assert call(node, made["key"], "GET", "/v1/federation/audit").json()["error"] == "invalid_api_key"
    again = call(node, admin, "POST", f"{KEYS}/{made['id']}/revoke")
    assert again.status_code == 200 and again.json()["revoked"] is False

    actor = f"apikey:{key_id(admin)}"
    created = [r for r in audit_rows(node, "apikey_created") if r[1] == actor]
    assert created == [("apikey_created", actor, None,
                        {"id": made["id"], "permissions": ["audit:read"], "label": "log reader"}, "127.0.0.1")]
    # One row for the revocation: revoking a revoked key changes nothing and writes nothing.
    assert audit_rows(node, "apikey_revoked") == [("apikey_revoked", actor, None, {"id": made["id"]}, "127.0.0.1")]
    assert node.cli("audit", "verify").returncode == 0


def test_a_key_cannot_create_a_key_with_a_permission_it_does_not_hold(node):
    keyman = create(node, node.api_key, "key manager", ["admin:keys", "facts:read"])["key"]
    # Within its own permissions: allowed, including admin:keys itself.
    assert create(node, keyman, "reader", ["facts:read"])["permissions"] == ["facts:read"]
    assert create(node, keyman, "deputy", ["admin:keys"])["permissions"] == ["admin:keys"]
    before = node.sql("SELECT COUNT(*) FROM api_keys")[0][0]
    for asked in (["facts:write"], ["facts:read", "admin:federation"], ["all"]):
        res = call(node, keyman, "POST", KEYS, json={"name": "too much", "permissions": asked})
        assert res.status_code == 403, res.text
        body = res.json()
        assert body["error"] == "permission_escalation"
        assert body["missing"] and not set(body["missing"]) & {"admin:keys", "facts:read"}
    assert node.sql("SELECT COUNT(*) FROM api_keys")[0][0] == before  # nothing created
    refused = audit_rows(node, "apikey_refused")
    assert len(refused) == 3
    assert {r[2] for r in refused} == {"permission_escalation"}
    assert refused[0][1] == f"apikey:{key_id(keyman)}" and refused[0][4] == "127.0.0.1"
    assert refused[0][3] == {"action": "create", "permissions": ["facts:write"], "missing": ["facts:write"]}
    assert node.cli("audit", "verify").returncode == 0


def test_keys_without_admin_keys_are_refused_everywhere(node):
    # Every other permission, but not admin:keys.
    others = create(node, node.api_key, "no admin", ["federate", "admin:federation", "audit:read", "facts:write",
                                                       "facts:read", "facts:erase"])["key"]
    for method, path, body in (("POST", KEYS, {"name": "x", "permissions": ["facts:read"]}), ("GET", KEYS, None),
                               ("POST", f"{KEYS}/{key_id(node.api_key)}/revoke", None)):
        res = call(node, others, method, path, json=body)
        assert res.status_code == 403 and res.json()["error"] == "permission_required", res.text
        assert res.json()["permission"] == "admin:keys"
        assert call(node, "", method, path, json=body).json()["error"] == "invalid_api_key"


def test_revocation_rules_any_key_itself_but_never_the_last_admin_keys_key(node):
    admin = node.api_key  # every permission
    deputy = create(node, admin, "deputy", ["admin:keys"])["key"]
    # A key may revoke a key with more permissions than its own: revoking grants nothing.
    res = call(node, deputy, "POST", f"{KEYS}/{key_id(admin)}/revoke")
    assert res.status_code == 200 and res.json()["revoked"] is True
    assert call(node, admin, "GET", KEYS).status_code == 401
    # The deputy is now the last active key holding admin:keys: it cannot revoke itself.
    res = call(node, deputy, "POST", f"{KEYS}/{key_id(deputy)}/revoke")
    assert res.status_code == 409 and res.json()["error"] == "last_admin_key", res.text
    assert res.json()["id"] == key_id(deputy)
    assert call(node, deputy, "GET", KEYS).status_code == 200  # still works
    (refused,) = audit_rows(node, "apikey_refused")
    assert refused[1:4] == (f"apikey:{key_id(deputy)}", "last_admin_key", {"action": "revoke", "id": key_id(deputy)})
    # With a second admin:keys key, a key may revoke itself.
    second = create(node, deputy, "second", ["admin:keys"])["key"]
    res = call(node, deputy, "POST", f"{KEYS}/{key_id(deputy)}/revoke")
    assert res.status_code == 200 and res.json()["revoked"] is True
    assert call(node, deputy, "GET", KEYS).status_code == 401
    assert call(node, second, "POST", f"{KEYS}/{key_id(second)}/revoke").json()["error"] == "last_admin_key"
    # Keys without admin:keys are never protected: the last one holding facts:read goes.
    reader = create(node, second, "reader", ["admin:keys"])["key"]
    assert call(node, second, "POST", f"{KEYS}/{key_id(reader)}/revoke").json()["revoked"] is True
    # The CLI on the host is not bound by the rule (the operator there can always make a new key).
    assert node.cli("apikey", "revoke", key_id(second)).returncode == 0
    assert node.cli("audit", "verify").returncode == 0


BAD_CREATE = [
    (b"not json", 400, "invalid_json", None),
    (b"", 400, "invalid_json", None),
    (b"[]", 422, "invalid_request", "body"),
    (b'{"name": "x", "permissions": ["facts:read"], "label": "y"}', 422, "invalid_request", "label"),
    (b'{"permissions": ["facts:read"]}', 422, "invalid_request", "name"),
    (b'{"name": "", "permissions": ["facts:read"]}', 422, "invalid_request", "name"),
    (b'{"name": "   ", "permissions": ["facts:read"]}', 422, "invalid_request", "name"),
    (json.dumps({"name": "n" * 101, "permissions": ["facts:read"]}).encode(), 422, "invalid_request", "name"),
    (b'{"name": "a\\u0000b", "permissions": ["facts:read"]}', 422, "invalid_request", "name"),
    (b'{"name": "a\\nb", "permissions": ["facts:read"]}', 422, "invalid_request", "name"),
    (b'{"name": 5, "permissions": ["facts:read"]}', 422, "invalid_request", "name"),
    (b'{"name": "x", "permissions": "facts:read"}', 422, "invalid_request", "permissions"),
    (b'{"name": "x", "permissions": [1]}', 422, "invalid_request", "permissions"),
    (b'{"name": "x", "permissions": null}', 422, "invalid_request", "permissions"),
    (json.dumps({"name": "x", "permissions": ["p" * 65]}).encode(), 422, "invalid_request", "permissions"),
    (json.dumps({"name": "x", "permissions": ["facts:read"] * (2 * len(PERMISSIONS) + 1)}).encode(), 422, "invalid_request", "permissions"),
    (b'{"name": "x", "permissions": []}', 422, "invalid_permissions", "permissions"),
    (b'{"name": "x", "permissions": ["bogus"]}', 422, "invalid_permissions", "permissions"),
    (b'{"name": "x", "permissions": ["facts:read\\u0000"]}', 422, "invalid_permissions", "permissions"),
    (b'{"name": "x", "permissions": ["facts:read"], "expires_in_days": 0}', 422, "invalid_request", "expires_in_days"),
    (b'{"name": "x", "permissions": ["facts:read"], "expires_in_days": "5"}', 422, "invalid_request",
     "expires_in_days"),
    (b'{"name": "x", "permissions": ["facts:read"], "expires_in_days": true}', 422, "invalid_request",
     "expires_in_days"),
    (b'{"name": "x", "permissions": ["facts:read"], "expires_in_days": 1e400}', 422, "invalid_request",
     "expires_in_days"),
    (b'{"name": "x", "permissions": ["facts:read"], "expires_in_days": 36501}', 422, "invalid_request",
     "expires_in_days"),
]


def test_bad_input_gets_a_stable_code_never_a_500(node):
    admin = node.api_key
    before = node.sql("SELECT COUNT(*) FROM api_keys")[0][0]
    for raw, status, code, field in BAD_CREATE:
        res = call(node, admin, "POST", KEYS, content=raw, headers={"Content-Type": "application/json"})
        assert (res.status_code, res.json()["error"], res.json().get("field")) == (status, code, field), (raw, res.text)
    assert node.sql("SELECT COUNT(*) FROM api_keys")[0][0] == before

    for path, status, code in ((f"{KEYS}/0123456789ab/revoke", 404, "api_key_not_found"),
                               (f"{KEYS}/0123456789AB/revoke", 422, "invalid_request"),
                               (f"{KEYS}/{key_id(admin)}%00/revoke", 422, "invalid_request"),
                               (f"{KEYS}/{admin}/revoke", 422, "invalid_request"),  # never a whole key in a URL
                               (f"{KEYS}/a/b/revoke", 404, "not_found")):
        res = call(node, admin, "POST", path)
        assert (res.status_code, res.json()["error"]) == (status, code), (path, res.text)
    res = call(node, admin, "POST", f"{KEYS}/{key_id(admin)}/revoke", content=b"{oops")
    assert (res.status_code, res.json()["error"]) == (400, "invalid_json")
    res = call(node, admin, "DELETE", KEYS)
    assert (res.status_code, res.json()["error"]) == (405, "method_not_allowed")
    assert call(node, admin, "GET", KEYS).status_code == 200  # the admin key was never revoked
    assert "Traceback" not in node.log() and "internal_error" not in node.log()


@pytest.mark.parametrize("name", ["ünïcødé ключ 鍵", "x" * 100])
def test_names_are_kept_as_given(node, name):
    made = create(node, node.api_key, name, ["facts:read"])
    listed = {k["id"]: k for k in call(node, node.api_key, "GET", KEYS).json()["keys"]}
    assert listed[made["id"]]["name"] == name
