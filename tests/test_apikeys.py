"""Operator API keys, end to end: the real CLI, real servers, real databases on both
engines (design §6, §7).

Every test talks to a real server over HTTP (served in process, or a `stigmem-node serve`
subprocess where the first start's output is checked) and edits nothing but the database
itself (``node.sql``) where a test needs a state the CLI cannot make.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import httpx

from tests.engines import stored_bytes
from tests.nodes import KEY_RE, RunningNode, run_cli

AUDIT = "/v1/federation/audit"
PEERS = "/v1/federation/peers"
INVALID_KEY_BODY = {"error": "invalid_api_key", "detail": "invalid_api_key", "message": "a valid API key is required"}


def create_key(node: RunningNode, permissions: str, *extra: str, env: dict[str, str] | None = None) -> dict:
    res = node.cli("apikey", "create", "--permissions", permissions, "--json", *extra, env=env)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert KEY_RE.fullmatch(data["key"]), data
    return data


def get(node: RunningNode, path: str, headers: dict[str, str] | None = None,
        local_address: str | None = None) -> httpx.Response:
    """One request on a fresh connection, with exactly the headers given (no default key)."""
    transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
    with httpx.Client(base_url=node.url, timeout=10, transport=transport) as client:
        return client.get(path, headers=headers or {})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- CLI: create / list / revoke -------------------------------------------------------------
def test_cli_create_list_revoke_and_keys_work_over_http_with_their_permissions(node):
    reader = create_key(node, "audit:read", "--label", "auditor")
    assert reader["permissions"] == ["audit:read"]
    assert reader["label"] == "auditor"
    assert reader["revoked_at"] is None and reader["expires_at"] is None
    assert reader["key"].startswith(reader["prefix"])

    # Human output of create: the key on its own line, then the permissions.
    human = node.cli("apikey", "create", "--permissions", "federate,audit:read")
    assert human.returncode == 0, human.stderr
    fed_key = KEY_RE.search(human.stdout).group(0)
    assert human.stdout.splitlines()[0] == fed_key
    assert "federate" in human.stdout and "audit:read" in human.stdout

    listed = node.cli_json("apikey", "list")
    by_id = {k["id"]: k for k in listed}
    assert reader["id"] in by_id and fed_key.split("_")[1] in by_id
    assert by_id[reader["id"]]["permissions"] == ["audit:read"]
    assert by_id[reader["id"]]["label"] == "auditor"
    assert all("key" not in k and "key_hash" not in k for k in listed)

    # The key works with its permission...
    ok = get(node, AUDIT, bearer(reader["key"]))
    assert ok.status_code == 200, ok.text
    # ...and is refused (403, not 401) for what it lacks.
    denied = get(node, PEERS, bearer(reader["key"]))
    assert denied.status_code == 403
    assert denied.json() == {
        "error": "permission_required", "detail": "permission_required",
        "message": "this API key lacks the federate permission", "permission": "federate",
    }
    assert get(node, PEERS, bearer(fed_key)).status_code == 200
    assert get(node, AUDIT, bearer(fed_key)).status_code == 200

    revoked = node.cli_json("apikey", "revoke", reader["id"])
    assert revoked["id"] == reader["id"] and revoked["revoked_at"]
    after = get(node, AUDIT, bearer(reader["key"]))
    assert after.status_code == 401 and after.json() == INVALID_KEY_BODY

    human_list = node.cli("apikey", "list")
    assert human_list.returncode == 0
    row = next(line for line in human_list.stdout.splitlines() if reader["id"] in line)
    assert "revoked" in row
    # Revoking by the full key also works (operators paste what they have).
    res = node.cli("apikey", "revoke", fed_key)
    assert res.returncode == 0, res.stderr
    assert "Revoked" in res.stdout
    assert get(node, PEERS, bearer(fed_key)).status_code == 401

    missing = node.cli("apikey", "revoke", "0123456789ab")
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "Traceback" not in missing.stderr

    events = [e["event_type"] for e in node.cli_json("audit", "list")]
    # the first admin key (created by the first serve) is audited too
    assert events.count("apikey_created") == 3 and events.count("apikey_revoked") == 2


def test_unknown_permission_fails_with_one_clear_line_and_no_traceback(tmp_path, engine):
    db, url = tmp_path / "n.db", engine.url("n")
    assert run_cli("init", db=db, database_url=url).returncode == 0
    for perms in ("bogus", "federate,bogus", " , "):
        res = run_cli("apikey", "create", "--permissions", perms, db=db, database_url=url)
        assert res.returncode != 0, perms
        assert res.stdout == ""
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr
        assert "Traceback" not in res.stderr
        assert "permission" in lines[0]
    assert "'bogus'" in run_cli("apikey", "create", "--permissions", "bogus", db=db, database_url=url).stderr
    listed = json.loads(run_cli("apikey", "list", "--json", db=db, database_url=url).stdout)
    assert [k["label"] for k in listed] == ["first admin key"]  # from init; nothing else was created


# -- one 401 for every failure ----------------------------------------------------------------
def test_every_authentication_failure_gets_the_same_401_body(node):
    good = create_key(node, "audit:read")
    revoked = create_key(node, "audit:read")
    expired = create_key(node, "audit:read", "--expires-in-days", "1")
    assert expired["expires_at"]
    assert get(node, AUDIT, bearer(expired["key"])).status_code == 200  # valid until it expires
    assert node.cli("apikey", "revoke", revoked["id"]).returncode == 0
    node.sql("UPDATE api_keys SET expires_at = ? WHERE id = ?", ("2000-01-01T00:00:00.000000Z", expired["id"]))

    key_id, secret = good["key"].split("_")[1], good["key"].split("_")[2]
    wrong_secret = f"stgm_{key_id}_{'A' * 43}"
    assert wrong_secret != good["key"]
    unknown_id = f"stgm_{'0' * 12}_{secret}"
    cases = {
        "no header": {},
        "basic scheme": {"Authorization": "Basic " + good["key"]},
        "key without scheme": {"Authorization": good["key"]},
        "garbage token": bearer("not-a-key"),
        "unknown id": bearer(unknown_id),
        "wrong secret": bearer(wrong_secret),
        "revoked key": bearer(revoked["key"]),
        "expired key": bearer(expired["key"]),
    }
    bodies = {}
    for name, headers in cases.items():
        r = get(node, AUDIT, headers)
        assert r.status_code == 401, (name, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json", name
        bodies[name] = r.content
    assert len(set(bodies.values())) == 1, bodies
    assert json.loads(next(iter(bodies.values()))) == INVALID_KEY_BODY
    # 8 failures so far, under the limit of 10: the valid key still works.
    assert get(node, AUDIT, bearer(good["key"])).status_code == 200


# -- secrets at rest --------------------------------------------------------------------------
def test_key_secret_is_never_stored_nor_listed_and_pepper_file_is_0600(node):
    created = create_key(node, "federate", "--label", "ci")
    keys = [node.api_key, created["key"]]
    assert get(node, PEERS, bearer(created["key"])).status_code == 200  # touches last_used_at

    listing = node.cli("apikey", "list").stdout + node.cli("apikey", "list", "--json").stdout
    raw = stored_bytes(node.target)
    for key in keys:
        secret = key.split("_", 2)[2]
        assert key.encode() not in raw and secret.encode() not in raw
        assert key not in listing and secret not in listing
    # What is stored is an HMAC, not the key.
    hashes = [h for (h,) in node.sql("SELECT key_hash FROM api_keys")]
    assert len(hashes) == 2 and all(len(h) == 64 for h in hashes)

    pepper = Path(str(node.db) + ".pepper")
    assert pepper.parent == node.db.parent
    assert stat.S_IMODE(pepper.stat().st_mode) == 0o600
    if node.engine == "sqlite":
        assert stat.S_IMODE(node.db.stat().st_mode) == 0o600  # invariant 8
    assert pepper.read_text().strip().encode() not in raw


def test_first_serve_prints_an_admin_key_and_a_restart_prints_none(tmp_path, engine):
    first = RunningNode(tmp_path, "n", database_url=engine.url("n"))
    try:
        assert first.api_key
        assert "First start" in first.log()
        assert get(first, AUDIT, bearer(first.api_key)).status_code == 200
        # The hint shows the whole key: copied as it is, it works.
        hint = next(line for line in first.log().splitlines() if "use it as:" in line)
        assert f"Authorization: Bearer {first.api_key}'" in hint
    finally:
        first.stop()
    second = RunningNode(tmp_path, "n", database_url=engine.url("n"))  # same directory and name: same database
    try:
        assert second.api_key == ""
        assert KEY_RE.search(second.log()) is None
        assert "First start" not in second.log()
        # The first admin key (and the pepper file behind it) survive the restart.
        assert get(second, AUDIT, bearer(first.api_key)).status_code == 200
    finally:
        second.stop()


def test_node_uses_the_pepper_from_the_environment(start_node):
    pepper_q = "q-pepper-" + "9" * 32
    pepper_p = "p-pepper-" + "7" * 32
    node = start_node("peppered", env={"STIGMEM_API_KEY_PEPPER": pepper_q})
    assert node.api_key
    assert get(node, AUDIT, bearer(node.api_key)).status_code == 200
    assert not Path(str(node.db) + ".pepper").exists()  # the env pepper wins; no file is made

    under_q = create_key(node, "audit:read", env={"STIGMEM_API_KEY_PEPPER": pepper_q})
    assert get(node, AUDIT, bearer(under_q["key"])).status_code == 200
    # Another pepper would make keys that never work: the command refuses it, and stores nothing.
    before = {k["id"] for k in node.cli_json("apikey", "list")}
    res = node.cli("apikey", "create", "--permissions", "audit:read", env={"STIGMEM_API_KEY_PEPPER": pepper_p})
    assert res.returncode == 2 and "pepper" in res.stderr and "Traceback" not in res.stderr
    assert {k["id"] for k in node.cli_json("apikey", "list")} == before


# -- failed-attempt limit ---------------------------------------------------------------------
def test_ten_failures_from_one_address_throttle_it_even_for_a_valid_key(node):
    valid = node.api_key
    for i in range(10):
        r = get(node, AUDIT, bearer(f"stgm_{i:012x}_{'B' * 43}"))
        assert r.status_code == 401, (i, r.text)
    started = time.monotonic()
    throttled = get(node, AUDIT, bearer(valid))
    assert throttled.status_code == 429, throttled.text
    body = throttled.json()
    assert body["error"] == body["detail"] == "too_many_failed_attempts"
    assert isinstance(body["message"], str) and body["message"]
    retry_after = int(throttled.headers["Retry-After"])
    assert 1 <= retry_after <= 60 + (time.monotonic() - started)
    assert throttled.headers.get("x-request-id")
    # Still throttled, whatever is presented, and more attempts do not earn more audit rows.
    assert get(node, PEERS, bearer(valid)).status_code == 429
    assert get(node, PEERS, {}).status_code == 429

    # The limit is per client address: another loopback address is not affected.
    other = get(node, AUDIT, bearer(valid), local_address="127.0.0.2")
    assert other.status_code == 200, other.text
    rows = [e for e in other.json()["entries"] if e["event_type"] == "apikey_auth_throttled"]
    assert len(rows) == 1
    assert rows[0]["remote_addr"] == "127.0.0.1"
    assert rows[0]["reason"] == "too_many_failed_attempts"
    assert rows[0]["detail"] == {"path": AUDIT}

    cli_rows = node.cli_json("audit", "list", "--event-type", "apikey_auth_throttled")
    assert [r["seq"] for r in cli_rows] == [rows[0]["seq"]]
    assert node.cli("audit", "verify").returncode == 0
