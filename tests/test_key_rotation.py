"""Key rotation: endorsed by the old key, followed by peers, refused without endorsement."""

from __future__ import annotations

import json
import time

import httpx

from tests.test_peers import audit_events


def approve(x, y) -> dict:
    peer = x.client().post("/v1/federation/peers", json=y.well_known()["declaration"]).json()
    res = x.client().post(f"/v1/federation/peers/{peer['peer_id']}/approve",
                          json={"pubkey_fingerprint": peer["pubkey_fingerprint"]})
    assert res.status_code == 200, res.text
    return res.json()


def wait_for_key(node, key_id: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = node.well_known()
        if doc["key_id"] == key_id:
            return doc
        time.sleep(0.2)
    raise AssertionError("the server did not adopt the rotated key")


def test_rotation_is_endorsed_adopted_by_the_server_and_followed_by_peers(pair):
    a, b = pair
    approve(a, b)
    approve(b, a)
    b.client().post("/v1/facts", json={"entity": "e", "relation": "r", "value": {"type": "string", "v": "x"},
                                       "source": "s", "scope": "public"})
    old = b.well_known()
    rotated = b.cli_json("keys", "rotate", "--grace", "1")
    assert rotated["old_key_id"] == old["key_id"] and rotated["facts_resigned"] == 1
    doc = wait_for_key(b, rotated["key_id"])  # the running server picks it up by itself
    assert doc["declaration"]["federation_pubkey"] == doc["federation_pubkey"] != old["federation_pubkey"]
    (past,) = doc["previous_keys"]
    assert past["key_id"] == old["key_id"] and past["endorses"] == doc["key_id"] and past["retire_after"]

    # A follows the rotation: the endorsement chain links B's new key to the pinned one.
    res = a.cli("peers", "refresh", old["node_id"], "--json")
    assert res.returncode == 0, res.stderr
    view = json.loads(res.stdout)
    assert view["refresh"] == "key_rotated" and view["federation_pubkey"] == doc["federation_pubkey"]
    assert audit_events(a, event_type="peer_key_rotated")[0]["detail"]["key_id"] == doc["key_id"]
    assert json.loads(a.cli("peers", "refresh", old["node_id"], "--json").stdout)["refresh"] == "key_unchanged"

    # B's tokens, now signed with the new key, are accepted by A.
    res = b.cli("token", "mint", "--peer", a.well_known()["node_id"], "--method", "GET",
                "--path", "/v1/federation/facts?limit=5")
    assert res.returncode == 0, res.stderr
    pulled = httpx.get(a.url + "/v1/federation/facts?limit=5", headers={"Authorization": f"Bearer {res.stdout.strip()}"})
    assert pulled.status_code == 200, pulled.text
    assert b.cli("audit", "verify").returncode == 0


def test_an_unendorsed_key_change_is_refused_and_audited(pair, tmp_path):
    from stigmem_node.keys import generate_keypair, key_id_of
    from tests.engines import connect

    a, b = pair
    approve(a, b)
    pinned = b.well_known()["federation_pubkey"]
    b.stop()
    # An impostor (or a node that lost its key) starts over with a fresh key under B's identity.
    priv, pub = generate_keypair()
    with connect(b.target) as conn:
        conn.execute("UPDATE node_keys SET status = 'retired'")
        conn.execute("INSERT INTO node_keys VALUES (?, ?, ?, '2026-01-01T00:00:00.000000Z', 'active', NULL)",
                     (key_id_of(pub), pub, priv))
        conn.execute("UPDATE node_meta SET value = ? WHERE key = 'current_key_id'", (key_id_of(pub),))
    from tests.nodes import ServedNode

    b2 = ServedNode(b.workdir, b.name, port=b.port, database_url=b.database_url)
    try:
        res = a.cli("peers", "refresh", b2.well_known()["node_id"], "--json")
        assert res.returncode == 1
        assert json.loads(res.stdout)["refresh"] == "rotation_not_endorsed"
        assert json.loads(res.stdout)["federation_pubkey"] == pinned
        refused = audit_events(a, event_type="peer_key_rotation_refused")
        assert refused and refused[0]["reason"] == "rotation_not_endorsed"
    finally:
        b2.stop()


def test_the_subscriber_follows_a_rotation_by_itself(pair):
    """Facts signed with a peer's new key: one well-known refresh, then they are accepted."""
    a, b = pair
    approve(a, b)
    approve(b, a)
    b.client().post("/v1/facts", json={"facts": [
        {"entity": f"stigmem://b/{i}", "relation": "r", "value": {"type": "number", "v": i}, "source": "s",
         "scope": "public"} for i in range(3)]})
    rotated = b.cli_json("keys", "rotate", "--grace", "1")
    wait_for_key(b, rotated["key_id"])
    res = a.cli("pull", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(res.stdout)
    assert summary["new"] == 3 and summary["rejected"] == 0
    assert audit_events(a, event_type="peer_key_rotated")[0]["actor"] == "node:pull"
    assert audit_events(a, event_type="fact_rejected") == []


def test_a_peer_that_only_pulls_is_followed_after_its_first_failing_token(pair):
    """B serves A nothing, so A never sees B's re-signed facts; B's first token signed with
    the new key fails, A re-reads B's well-known in the background, and B's next token works."""
    a, b = pair
    approve(a, b)
    approve(b, a)
    rotated = b.cli_json("keys", "rotate", "--grace", "1")
    wait_for_key(b, rotated["key_id"])
    path = "/v1/federation/facts?limit=5"

    def attempt() -> int:
        res = b.cli("token", "mint", "--peer", a.well_known()["node_id"], "--method", "GET", "--path", path)
        assert res.returncode == 0, res.stderr
        return httpx.get(a.url + path, headers={"Authorization": f"Bearer {res.stdout.strip()}"}).status_code

    assert attempt() == 401
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not audit_events(a, event_type="peer_key_rotated"):
        time.sleep(0.1)
    assert audit_events(a, event_type="peer_key_rotated")[0]["actor"] == "node:auth"
    assert attempt() == 200
