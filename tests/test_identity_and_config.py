"""Node identity on first start and after restarts; configuration errors; discovery."""

from __future__ import annotations

import json
import os
import stat

import httpx
import pytest

from stigmem_node import declaration as d
from stigmem_node.clock import Clock
from stigmem_node.encoding import fingerprint
from tests.nodes import RunningNode, ServedNode, free_port, run_cli


def test_first_start_creates_identity_and_restart_keeps_it(tmp_path, engine):
    node = RunningNode(tmp_path, "n", database_url=engine.url("n"))
    try:
        first = node.well_known()
    finally:
        node.stop()
    assert first["node_id"].startswith("stigmem:node:")
    if not engine.postgres:
        assert stat.S_IMODE(os.stat(node.db).st_mode) == 0o600  # invariant 8
    again = RunningNode(tmp_path, "n", database_url=engine.url("n"))
    try:
        second = again.well_known()
        assert again.api_key == ""  # the admin key is printed on the very first start only
    finally:
        again.stop()
    for field in ("node_id", "federation_pubkey", "key_id"):
        assert first[field] == second[field]
    rows = node.sql("SELECT status FROM node_keys")
    meta = dict(node.sql("SELECT key, value FROM node_meta"))
    assert rows == [("active",)]
    assert meta["node_id"] == first["node_id"] and meta["current_key_id"] == first["key_id"]


def test_configured_node_id_and_url_are_used(tmp_path, engine):
    url = "http://127.0.0.1:9/"
    node = ServedNode(tmp_path, "n", env={"STIGMEM_NODE_ID": "stigmem://test-node-a", "STIGMEM_NODE_URL": url},
                      database_url=engine.url("n"))
    try:
        doc = node.well_known()
    finally:
        node.stop()
    assert doc["node_id"] == "stigmem://test-node-a"
    assert doc["node_url"] == "http://127.0.0.1:9" == doc["declaration"]["node_url"]


def test_well_known_has_reference_fields_and_a_valid_declaration(node):
    doc = node.well_known()
    for field in ("version", "node_id", "node_url", "auth", "federation", "federation_pubkey", "federation_version",
                  "federation_endpoints", "entity_uri", "key_id", "previous_keys", "declaration"):
        assert field in doc, field
    assert doc["federation"] == "enabled"
    assert doc["federation_endpoints"]["facts"] == "/v1/federation/facts"
    assert doc["node_url"] == node.url
    decl = d.verified(doc["declaration"], Clock().now(), leeway=d.timedelta(seconds=30))  # raises if rejected
    assert decl.federation_pubkey == doc["federation_pubkey"] and decl.node_id == doc["node_id"]
    assert doc["pubkey_fingerprint"] == fingerprint(doc["federation_pubkey"])
    health = httpx.get(node.url + "/healthz").json()
    assert health == {"status": "ok", "node_id": doc["node_id"], "database": "ok"}


def test_private_key_is_never_served_or_printed(start_process_node):
    node = start_process_node("a")  # its log is what `serve` printed
    ((priv,),) = node.sql("SELECT private_key FROM node_keys")
    assert priv not in json.dumps(node.well_known())
    res = node.cli("info", "--json")
    assert res.returncode == 0 and priv not in res.stdout + res.stderr
    assert priv not in node.log()


def test_init_creates_the_node_and_info_shows_it(tmp_path, engine):
    db = tmp_path / "x.db"
    engine.url("x", empty=True)  # on PostgreSQL, an empty database: what init starts from
    res = engine.cli("info", db=db)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    if not engine.postgres:
        assert "no node database" in res.stderr and not db.exists()
    init = engine.cli("init", "--json", db=db)
    assert init.returncode == 0, init.stderr
    assert json.loads(init.stdout)["admin_key"].startswith("stgm_")
    assert json.loads(engine.cli("init", "--json", db=db).stdout)["admin_key"] is None
    res = engine.cli("info", "--json", db=db)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["pubkey_fingerprint"] == fingerprint(info["federation_pubkey"])
    assert info["declaration"]["federation_pubkey"] == info["federation_pubkey"]
    human = engine.cli("info", db=db).stdout
    assert info["node_id"] in human and info["pubkey_fingerprint"] in human and info["key_id"] in human


@pytest.mark.sqlite_only  # --db and STIGMEM_DB_PATH handling, SQLite's synchronous setting
def test_invalid_configuration_fails_with_one_clear_line(tmp_path):
    cases = [
        ({"STIGMEM_PORT": "abc"}, (), "STIGMEM_PORT"),
        ({"STIGMEM_PORT": "70000"}, (), "STIGMEM_PORT"),
        ({"STIGMEM_NODE_URL": "ftp://x"}, (), "node URL"),
        ({}, ("--node-url", "not a url"), "node URL"),
        ({"STIGMEM_DB_PATH": str(tmp_path / "missing" / "x.db")}, (), "database directory"),
        ({"STIGMEM_SQLITE_SYNCHRONOUS": "sometimes"}, (), "synchronous"),
        ({"STIGMEM_FEDERATION_SCOPES": "company,galaxy"}, (), "galaxy"),
        ({"STIGMEM_API_KEY_PEPPER": "1:short"}, (), "pepper"),
    ]
    for env, args, needle in cases:
        db = [] if "STIGMEM_DB_PATH" in env else ["--db", str(tmp_path / "ok.db")]
        res = run_cli("serve", "--port", str(free_port()), *db, *args, env=env, timeout=15)
        assert res.returncode == 2, (env, args, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (env, args, res.stderr)
        assert "Traceback" not in res.stderr


@pytest.mark.sqlite_only  # a file that is not SQLite
def test_a_file_that_is_not_a_database_fails_cleanly(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    res = run_cli("info", db=bad)
    assert res.returncode == 2 and "not a usable stigmem database" in res.stderr
    assert "Traceback" not in res.stderr


def test_manifest_is_self_signed_over_canonical_json(node):
    from stigmem_node.encoding import b64url_decode, jcs
    from stigmem_node.keys import public_key_from_b64

    doc = node.well_known()
    man = httpx.get(node.url + "/.well-known/stigmem-manifest.json").json()
    assert man["public_key"] == doc["federation_pubkey"] and man["key_id"] == doc["key_id"]
    assert doc["node_id"] in man["entities"] and man["entity_uri"] == doc["entity_uri"]
    assert man["issued_at"] < man["expires_at"]
    body = {k: v for k, v in man.items() if k != "signature"}
    public_key_from_b64(man["public_key"]).verify(b64url_decode(man["signature"]), jcs(body))


def test_an_explicit_node_url_is_kept_until_another_is_given(tmp_path, engine):
    db = tmp_path / "n.db"
    assert engine.cli("init", "--node-url", "https://node.example.org", db=db).returncode == 0
    node = ServedNode(tmp_path, "n", database_url=engine.url("n"))  # no --node-url: the recorded one stays
    try:
        assert node.well_known()["node_url"] == "https://node.example.org"
    finally:
        node.stop()
    node = ServedNode(tmp_path, "n", env={"STIGMEM_NODE_URL": "https://other.example.org"},
                      database_url=engine.url("n"))
    try:
        assert node.well_known()["node_url"] == "https://other.example.org"
    finally:
        node.stop()
