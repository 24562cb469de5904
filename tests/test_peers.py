"""The peer registry end to end: two real nodes, real HTTP, real keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stigmem_node import declaration as d
from stigmem_node.clock import iso_seconds
from stigmem_node.encoding import b64url_decode, b64url_encode, fingerprint
from stigmem_node.keys import generate_keypair
from tests.nodes import free_port


def private_key_of(node) -> Ed25519PrivateKey:
    ((priv,),) = node.sql("SELECT private_key FROM node_keys WHERE status = 'active'")
    return Ed25519PrivateKey.from_private_bytes(b64url_decode(priv))


def signed(fields: dict, key: Ed25519PrivateKey) -> dict:
    return {**fields, "declaration_sig": b64url_encode(key.sign(d.canonical_bytes(fields)))}


def fields_of(node, **changes) -> dict:
    decl = node.well_known()["declaration"]
    out = {k: decl[k] for k in d.SIGNED_FIELDS}
    out.update(changes)
    return out


def audit_events(node, **params) -> list[dict]:
    res = node.client().get("/v1/federation/audit", params={"limit": 500, **params})
    assert res.status_code == 200, res.text
    return res.json()["entries"]


def test_two_nodes_exchange_declarations_and_approve_each_other_by_fingerprint(pair):
    a, b = pair
    ra = a.client().post("/v1/federation/peers", json=b.well_known()["declaration"])
    rb = b.client().post("/v1/federation/peers", json=a.well_known()["declaration"])
    assert ra.status_code == rb.status_code == 201, (ra.text, rb.text)
    assert ra.json()["status"] == rb.json()["status"] == "pending_approval"
    assert ra.json()["node_id"] == b.well_known()["node_id"]
    assert ra.json()["allowed_scopes"] == ["company", "public"]

    # Out of band, each operator reads the other's fingerprint from its own node.
    fp_b = b.cli_json("info")["pubkey_fingerprint"]
    fp_a = a.well_known()["pubkey_fingerprint"]
    assert fp_b == fingerprint(b.well_known()["federation_pubkey"]) == ra.json()["pubkey_fingerprint"]

    ok = a.client().post(f"/v1/federation/peers/{ra.json()['peer_id']}/approve", json={"pubkey_fingerprint": fp_b})
    assert ok.status_code == 200, ok.text
    assert ok.json()["status"] == "active" and ok.json()["approved_by"].startswith("apikey:")
    ok = b.client().post(f"/v1/federation/peers/{rb.json()['node_id']}/approve", json={"pubkey_fingerprint": fp_a})
    assert ok.status_code == 200 and ok.json()["status"] == "active"

    listed = a.client().get("/v1/federation/peers").json()["peers"]
    assert [(p["node_id"], p["status"]) for p in listed] == [(b.well_known()["node_id"], "active")]
    events = [e["event_type"] for e in audit_events(a)]
    assert events[-2:] == ["peer_registered", "peer_approved"]


def test_wrong_fingerprint_is_refused_and_audited(pair):
    a, b = pair
    peer = a.client().post("/v1/federation/peers", json=b.well_known()["declaration"]).json()
    wrong = fingerprint(generate_keypair()[1])
    res = a.client().post(f"/v1/federation/peers/{peer['peer_id']}/approve", json={"pubkey_fingerprint": wrong})
    assert res.status_code == 400
    assert res.json()["error"] == "fingerprint_mismatch"
    assert a.client().get(f"/v1/federation/peers/{peer['peer_id']}").json()["status"] == "pending_approval"
    failed = audit_events(a, event_type="peer_approval_failed")
    assert len(failed) == 1 and failed[0]["peer_id"] == peer["peer_id"]
    assert failed[0]["reason"] == "fingerprint_mismatch" and failed[0]["remote_addr"] == "127.0.0.1"
    # The CLI refuses it too, with exit 1 and no traceback.
    res = a.cli("peers", "approve", peer["node_id"], "--fingerprint", wrong)
    assert res.returncode == 1 and "fingerprint" in res.stderr and "Traceback" not in res.stderr


def _register(a, body) -> dict:
    res = a.client().post("/v1/federation/peers", json=body)
    assert res.status_code == 201, res.text
    return res.json()


def test_bad_declarations_are_rejected_with_distinct_reasons(pair):
    a, b = pair
    b_key = private_key_of(b)
    now = datetime.now(UTC)

    def attempt(body) -> str:
        peer = _register(a, body)
        assert peer["status"] == "rejected"
        # Rejected peers can be removed so that the node may register again.
        assert a.client().delete(f"/v1/federation/peers/{peer['peer_id']}").status_code == 200
        return peer["reason"]

    tampered = {**b.well_known()["declaration"], "allowed_scopes": ["company", "public", "team"]}
    stale = signed(fields_of(b, signed_at=iso_seconds(now - timedelta(days=8))), b_key)
    future = signed(fields_of(b, signed_at=iso_seconds(now + timedelta(minutes=5))), b_key)
    impostor_priv, impostor_pub = generate_keypair()
    impostor = signed(fields_of(b, federation_pubkey=impostor_pub),
                      Ed25519PrivateKey.from_private_bytes(b64url_decode(impostor_priv)))
    other_id = signed(fields_of(b, node_id="stigmem:node:someone-else"), b_key)
    dead = signed(fields_of(b, node_url=f"http://127.0.0.1:{free_port()}"), b_key)

    reasons = [attempt(x) for x in (tampered, stale, future, impostor, other_id, dead)]
    assert reasons == ["invalid_signature", "declaration_stale", "declaration_in_future",
                       "well_known_pubkey_mismatch", "well_known_node_id_mismatch", "well_known_unreachable"]
    rejected = audit_events(a, event_type="peer_registration_rejected")
    assert [e["reason"] for e in rejected] == reasons
    assert all(e["actor"].startswith("apikey:") and e["ts"] for e in rejected)
    # After all that, the real declaration still registers.
    assert _register(a, b.well_known()["declaration"])["status"] == "pending_approval"


def test_reregistering_returns_409_with_the_current_status(pair):
    a, b = pair
    decl = b.well_known()["declaration"]
    first = _register(a, decl)
    again = a.client().post("/v1/federation/peers", json=decl)
    assert again.status_code == 409
    assert again.json()["error"] == "peer_already_registered"
    assert again.json()["status"] == "pending_approval" and again.json()["peer_id"] == first["peer_id"]


def test_malformed_registrations_are_422_and_store_nothing(pair):
    a, b = pair
    decl = b.well_known()["declaration"]
    for body, code in [({**decl, "allowed_scopes": ["company", "galaxy"]}, "invalid_scope"),
                       ({k: v for k, v in decl.items() if k != "node_id"}, "malformed_declaration"),
                       ({**decl, "node_id": 7}, "malformed_declaration"),
                       ({**decl, "allowed_scopes": ["local"]}, "no_shared_scopes"),
                       ({**a.well_known()["declaration"]}, "cannot_peer_with_self")]:
        res = a.client().post("/v1/federation/peers", json=body)
        assert res.status_code == 422, res.text
        assert res.json()["error"] == code
    assert a.client().get("/v1/federation/peers").json()["peers"] == []


def test_operator_scopes_narrow_what_a_peer_gets(pair):
    a, b = pair
    peer = a.client().post("/v1/federation/peers?scopes=public", json=b.well_known()["declaration"]).json()
    assert peer["allowed_scopes"] == ["public"]


def test_peer_lifecycle_suspend_resume_revoke_remove(pair):
    a, b = pair
    c = a.client()
    peer = _register(a, b.well_known()["declaration"])
    pid = peer["peer_id"]
    assert c.post(f"/v1/federation/peers/{pid}/suspend").json()["error"] == "peer_status_conflict"
    assert c.post(f"/v1/federation/peers/{pid}/approve",
                  json={"pubkey_fingerprint": peer["pubkey_fingerprint"]}).json()["status"] == "active"
    assert c.post(f"/v1/federation/peers/{pid}/approve",
                  json={"pubkey_fingerprint": peer["pubkey_fingerprint"]}).status_code == 409
    assert c.post(f"/v1/federation/peers/{pid}/suspend", json={"reason": "maintenance"}).json()["status"] == "suspended"
    assert c.post(f"/v1/federation/peers/{pid}/resume").json()["status"] == "active"
    assert c.delete(f"/v1/federation/peers/{pid}").status_code == 409  # only rejected or revoked
    assert c.post(f"/v1/federation/peers/{pid}/revoke", json={"reason": "key leaked"}).json()["status"] == "revoked"
    assert c.post(f"/v1/federation/peers/{pid}/resume").status_code == 409  # revoked is terminal
    shown = c.get(f"/v1/federation/peers/{pid}").json()
    assert [h["event_type"] for h in shown["history"]] == [
        "peer_registered", "peer_approved", "peer_suspended", "peer_resumed", "peer_revoked"]
    assert shown["history"][2]["reason"] == "maintenance"
    assert c.delete(f"/v1/federation/peers/{pid}").json()["removed"] is True
    assert c.get(f"/v1/federation/peers/{pid}").status_code == 404
    assert _register(a, b.well_known()["declaration"])["status"] == "pending_approval"
    assert audit_events(a, event_type="peer_removed")[0]["peer_id"] == pid


def test_peer_actions_need_admin_federation(pair):
    a, b = pair
    res = a.cli("apikey", "create", "--permissions", "federate", "--json")
    import json

    key = json.loads(res.stdout)["key"]
    c = a.client(key)
    peer = c.post("/v1/federation/peers", json=b.well_known()["declaration"]).json()
    res = c.post(f"/v1/federation/peers/{peer['peer_id']}/approve", json={"pubkey_fingerprint": peer["pubkey_fingerprint"]})
    assert res.status_code == 403 and res.json()["error"] == "permission_required"
    assert c.get("/v1/federation/peers").status_code == 200


def test_cli_peers_add_fetches_verifies_and_registers(pair):
    a, b = pair
    a.stop()  # the CLI works on the database directly; no server needed
    res = a.cli("peers", "add", b.url)
    assert res.returncode == 0, res.stderr
    fp = b.well_known()["pubkey_fingerprint"]
    assert fp in res.stdout and "pending_approval" in res.stdout
    listed = a.cli_json("peers", "list")
    assert [(p["node_id"], p["status"]) for p in listed] == [(b.well_known()["node_id"], "pending_approval")]
    res = a.cli("peers", "approve", b.well_known()["node_id"], "--fingerprint", fp)
    assert res.returncode == 0, res.stderr
    shown = a.cli_json("peers", "show", b.well_known()["node_id"])
    assert shown["status"] == "active" and shown["approved_by"].startswith("cli:")
    assert [h["event_type"] for h in shown["history"]] == ["peer_registered", "peer_approved"]
    for action, status in [("suspend", "suspended"), ("resume", "active"), ("revoke", "revoked")]:
        assert a.cli_json("peers", action, shown["peer_id"])["status"] == status
    assert a.cli_json("peers", "remove", shown["peer_id"])["removed"] is True


def test_cli_peers_add_with_a_declaration_file(pair, tmp_path):
    import json

    a, b = pair
    path = tmp_path / "decl.json"
    path.write_text(json.dumps(b.well_known()["declaration"]))
    res = a.cli("peers", "add", b.url, "--declaration", str(path), "--scopes", "company", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["allowed_scopes"] == ["company"]
    res = a.cli("peers", "add", b.url, "--declaration", str(tmp_path / "missing.json"))
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_cli_peers_add_of_an_unreachable_node_fails_cleanly(node):
    res = node.cli("peers", "add", f"http://127.0.0.1:{free_port()}")
    assert res.returncode == 1
    assert "cannot reach" in res.stderr and "Traceback" not in res.stderr


def test_a_bad_declaration_cannot_squat_a_node_id(pair):
    """A rejected record never blocks: the genuine declaration replaces it."""
    a, b = pair
    tampered = {**b.well_known()["declaration"], "node_url": "http://127.0.0.1:1"}
    squat = _register(a, tampered)
    assert squat["status"] == "rejected" and squat["reason"] == "invalid_signature"
    real = _register(a, b.well_known()["declaration"])
    assert real["status"] == "pending_approval" and real["peer_id"] != squat["peer_id"]
    registered = audit_events(a, event_type="peer_registered")
    assert registered[-1]["detail"]["replaces"] == squat["peer_id"]
    # Once pending (or active), the record does block: 409.
    assert a.client().post("/v1/federation/peers", json=tampered).status_code == 409


def test_every_refused_registration_is_audited(pair):
    a, b = pair
    decl = b.well_known()["declaration"]
    _register(a, decl)
    a.client().post("/v1/federation/peers", json=decl)  # 409
    a.client().post("/v1/federation/peers", json=a.well_known()["declaration"])  # self
    a.client().post("/v1/federation/peers", json={**decl, "node_id": "x", "allowed_scopes": ["local"]})
    reasons = [e["reason"] for e in audit_events(a, event_type="peer_registration_rejected")]
    assert reasons == ["peer_already_registered", "cannot_peer_with_self", "no_shared_scopes"]


def test_forwarded_headers_are_not_believed_by_default(pair):
    """Any local process could claim another address; only configured proxies are trusted."""
    a, b = pair
    res = a.client().post("/v1/federation/peers", json=b.well_known()["declaration"],
                          headers={"X-Forwarded-For": "203.0.113.9"})
    assert res.status_code == 201
    assert audit_events(a, event_type="peer_registered")[0]["remote_addr"] == "127.0.0.1"


def test_forwarded_headers_are_believed_from_a_configured_proxy(start_node):
    a = start_node("a", env={"STIGMEM_TRUSTED_PROXIES": "127.0.0.1"})
    b = start_node("b")
    res = a.client().post("/v1/federation/peers", json=b.well_known()["declaration"],
                          headers={"X-Forwarded-For": "203.0.113.9"})
    assert res.status_code == 201
    assert audit_events(a, event_type="peer_registered")[0]["remote_addr"] == "203.0.113.9"
