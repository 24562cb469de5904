"""Local facts, end to end: ``POST/GET /v1/facts`` on a real server, the database file
itself, and the CLI (`facts add|list`, `token mint|inspect`).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stigmem_node.encoding import b64url_decode, b64url_encode
from stigmem_node.keys import public_key_from_b64
from tests.engines import SqlError, sql
from tests.nodes import ServedNode, run_cli

FACTS = "/v1/facts"
ERROR_KEYS = {"error", "detail", "message"}
CID_RE = re.compile(r"sha256:[0-9a-f]{64}")
HLC_RE = re.compile(r"[0-9]{13}\.[0-9]{3}")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")  # UUIDv7


@pytest.fixture
def n(start_node) -> ServedNode:
    return start_node("n")


def tag() -> str:
    return uuid.uuid4().hex[:10]


def fact(entity: str, v: Any = "x", vtype: str = "string", **extra: Any) -> dict:
    return {"entity": entity, "relation": "rel", "value": {"type": vtype, "v": v}, "source": "test", **extra}


def assert_error(res: httpx.Response, status: int, code: str) -> dict:
    assert res.status_code == status, (res.status_code, res.text)
    body = res.json()
    assert set(body) >= ERROR_KEYS and body["error"] == body["detail"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body


def listed(n: ServedNode, **params: Any) -> list[dict]:
    res = n.client().get(FACTS, params={"limit": 500, **params})
    assert res.status_code == 200, res.text
    return res.json()["facts"]


def private_key_text(db: Path | str) -> str:
    return sql(db, "SELECT private_key FROM node_keys WHERE status = 'active'")[0][0]


# --------------------------------------------------------------------------- POST /v1/facts


def test_single_fact_is_201_and_the_same_body_again_is_200_with_the_same_fact(n: ServedNode):
    body = fact(f"single:{tag()}", "hello", scope="company", confidence=0.5)
    res = n.client().post(FACTS, json=body)
    assert res.status_code == 201, res.text
    created = res.json()
    assert UUID_RE.fullmatch(created["id"]) and CID_RE.fullmatch(created["cid"])
    assert HLC_RE.fullmatch(created["hlc"]) and isinstance(created["seq"], int) and created["seq"] > 0
    assert created["value"] == {"type": "string", "v": "hello", "interpret_as": "content"}
    assert (created["scope"], created["confidence"], created["source"]) == ("company", 0.5, "test")
    assert created["origin_node_id"] == n.well_known()["node_id"]
    assert created["received_from"] is None and created["valid_until"] is None

    again = n.client().post(FACTS, json=body)
    assert again.status_code == 200, again.text
    assert {k: again.json()[k] for k in ("id", "cid", "seq", "hlc")} == {k: created[k] for k in ("id", "cid", "seq", "hlc")}
    # Anything covered by the CID makes a new fact.
    other = n.client().post(FACTS, json={**body, "confidence": 0.6})
    assert other.status_code == 201 and other.json()["id"] != created["id"]
    assert other.json()["seq"] > created["seq"] and other.json()["hlc"] > created["hlc"]


def test_defaults_scope_local_confidence_one(n: ServedNode):
    res = n.client().post(FACTS, json=fact(f"defaults:{tag()}"))
    assert res.status_code == 201
    assert (res.json()["scope"], res.json()["confidence"]) == ("local", 1.0)


def test_a_batch_of_500_is_stored_in_one_transaction_and_is_idempotent(n: ServedNode):
    t = tag()
    batch = [fact(f"batch:{t}:{i}", i, "number", scope="public") for i in range(500)]
    res = n.client().post(FACTS, json={"facts": batch})
    assert res.status_code == 201, res.text
    body = res.json()
    assert (body["created"], body["duplicates"], len(body["facts"])) == (500, 0, 500)
    assert [f["entity"] for f in body["facts"]] == [b["entity"] for b in batch]  # input order
    seqs = [f["seq"] for f in body["facts"]]
    assert seqs == list(range(seqs[0], seqs[0] + 500))  # one commit: nothing interleaved
    hlcs = [f["hlc"] for f in body["facts"]]
    assert hlcs == sorted(hlcs) and len(set(hlcs)) == 500

    again = n.client().post(FACTS, json={"facts": batch})
    assert again.status_code == 200
    assert (again.json()["created"], again.json()["duplicates"]) == (0, 500)
    assert [f["id"] for f in again.json()["facts"]] == [f["id"] for f in body["facts"]]

    # Duplicates inside one batch are one fact; a mixed batch is 201.
    dup = fact(f"batch:{t}:dup")
    mixed = n.client().post(FACTS, json={"facts": [dup, batch[0], dup]})
    assert mixed.status_code == 201
    got = mixed.json()
    assert (got["created"], got["duplicates"]) == (1, 2)
    assert got["facts"][0]["id"] == got["facts"][2]["id"] and got["facts"][1]["id"] == body["facts"][0]["id"]
    assert len(listed(n, entity=f"batch:{t}:dup")) == 1


def test_batch_limits_and_shape(n: ServedNode):
    t = tag()
    res = n.client().post(FACTS, json={"facts": [fact(f"big:{t}:{i}") for i in range(501)]})
    body = assert_error(res, 422, "batch_too_large")
    assert body["field"] == "facts"
    assert listed(n, entity=f"big:{t}:0") == []
    for bad in ([], "nope", None, {"a": 1}):
        assert_error(n.client().post(FACTS, json={"facts": bad}), 422, "invalid_request")


def test_one_invalid_fact_refuses_the_whole_batch(n: ServedNode):
    t = tag()
    batch = [fact(f"atomic:{t}:{i}") for i in range(6)]
    batch[3]["value"]["v"] = 17  # a number for a string
    res = n.client().post(FACTS, json={"facts": batch})
    body = assert_error(res, 422, "invalid_fact")
    assert body["field"] == "facts[3].value.v"
    batch[3] = {**fact(f"atomic:{t}:3"), "confidence": 2}
    assert assert_error(n.client().post(FACTS, json={"facts": batch}), 422, "invalid_fact")["field"] == \
        "facts[3].confidence"
    assert [f for f in listed(n, relation="rel") if f["entity"].startswith(f"atomic:{t}:")] == []


INVALID = [
    ("string_number", {"value": {"type": "string", "v": 5}}, "value.v"),
    ("text_bool", {"value": {"type": "text", "v": True}}, "value.v"),
    ("string_missing_v", {"value": {"type": "string"}}, "value.v"),
    ("number_string", {"value": {"type": "number", "v": "5"}}, "value.v"),
    ("number_bool", {"value": {"type": "number", "v": True}}, "value.v"),
    ("number_too_big", {"value": {"type": "number", "v": 2**64}}, "value.v"),
    ("boolean_string", {"value": {"type": "boolean", "v": "true"}}, "value.v"),
    ("boolean_int", {"value": {"type": "boolean", "v": 1}}, "value.v"),
    ("datetime_garbage", {"value": {"type": "datetime", "v": "yesterday"}}, "value.v"),
    ("datetime_no_offset", {"value": {"type": "datetime", "v": "2026-01-01T00:00:00"}}, "value.v"),
    ("datetime_number", {"value": {"type": "datetime", "v": 1700000000}}, "value.v"),
    ("ref_space", {"value": {"type": "ref", "v": "a b"}}, "value.v"),
    ("ref_empty", {"value": {"type": "ref", "v": ""}}, "value.v"),
    ("null_with_value", {"value": {"type": "null", "v": 1}}, "value.v"),
    ("unknown_type", {"value": {"type": "galaxy", "v": 1}}, "value.type"),
    ("bad_interpret_as", {"value": {"type": "string", "v": "x", "interpret_as": "shout"}}, "value.interpret_as"),
    ("value_not_object", {"value": "x"}, "value"),
    ("value_missing", {"value": None}, "value"),
    ("bad_scope", {"scope": "galaxy"}, "scope"),
    ("scope_not_string", {"scope": 1}, "scope"),
    ("confidence_1_5", {"confidence": 1.5}, "confidence"),
    ("confidence_negative", {"confidence": -0.1}, "confidence"),
    ("confidence_string", {"confidence": "high"}, "confidence"),
    ("confidence_bool", {"confidence": True}, "confidence"),
    ("valid_until_garbage", {"valid_until": "garbage"}, "valid_until"),
    ("valid_until_number", {"valid_until": 12345}, "valid_until"),
    ("valid_until_no_offset", {"valid_until": "2030-01-01T00:00:00"}, "valid_until"),
    ("entity_missing", {"entity": None}, "entity"),
    ("entity_empty", {"entity": ""}, "entity"),
    ("entity_blank", {"entity": "   "}, "entity"),
    ("entity_control_char", {"entity": "a\nb"}, "entity"),
    ("entity_too_long", {"entity": "e" * 2049}, "entity"),
    ("relation_number", {"relation": 5}, "relation"),
    ("source_missing", {"source": None}, "source"),
]


@pytest.mark.parametrize("case", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_fact_is_422_naming_the_field(n: ServedNode, case):
    _, changes, field = case
    entity = f"invalid:{tag()}"
    body = {**fact(entity), **changes}
    res = n.client().post(FACTS, json=body)
    err = assert_error(res, 422, "invalid_fact")
    assert err["field"] == field, err
    # The same fact inside a batch names its index.
    res = n.client().post(FACTS, json={"facts": [fact(f"{entity}:ok"), body]})
    assert assert_error(res, 422, "invalid_fact")["field"] == f"facts[1].{field}"
    assert listed(n, entity=f"{entity}:ok") == []


def test_non_finite_numbers_oversize_values_and_bad_json_are_4xx(n: ServedNode):
    c = n.client()
    headers = {"content-type": "application/json"}
    for raw in ('{"entity":"e","relation":"r","source":"s","value":{"type":"number","v":NaN}}',
                '{"entity":"e","relation":"r","source":"s","value":{"type":"number","v":-Infinity}}',
                '{"entity":"e","relation":"r","source":"s","value":{"type":"number","v":1e400}}',
                '{"entity":"e","relation":"r","source":"s","confidence":NaN,"value":{"type":"null","v":null}}'):
        res = c.post(FACTS, content=raw, headers=headers)
        assert res.status_code == 422, (raw, res.text)
    big = c.post(FACTS, json=fact(f"big:{tag()}", "x" * (256 * 1024 + 1)))
    assert assert_error(big, 422, "value_too_large")["field"] == "value.v"
    ok = c.post(FACTS, json=fact(f"big:{tag()}", "é" * (128 * 1024)))  # exactly 256 KiB as UTF-8
    assert ok.status_code == 201, ok.text[:200]
    assert_error(c.post(FACTS, content="{not json", headers=headers), 400, "invalid_json")
    assert c.post(FACTS, content="[1]", headers=headers).status_code == 422
    for raw in ("[" * 100_000, '{"facts":' + "[" * 50_000 + "]" * 50_000 + "}"):
        res = n.client().post(FACTS, content=raw, headers=headers)
        assert 400 <= res.status_code < 500, res.text
    too_big = n.client().post(FACTS, json={"facts": [fact("e", "y" * 200_000) for _ in range(6)]})
    assert_error(too_big, 413, "body_too_large")


def test_integers_stay_integers_and_floats_stay_floats(n: ServedNode):
    t = tag()
    c = n.client()
    made = {}
    for name, v in (("int", 42), ("float", 42.0), ("neg", -7), ("big", 2**62), ("exp", 1e20), ("frac", 1.5)):
        res = c.post(FACTS, json=fact(f"num:{t}:{name}", v, "number"))
        assert res.status_code == 201, res.text
        made[name] = res.json()
        assert '"v":' + json.dumps(v) + "," in res.text.replace(" ", "")
    assert made["int"]["cid"] != made["float"]["cid"]
    for name, v in (("int", 42), ("float", 42.0), ("neg", -7), ("big", 2**62), ("exp", 1e20), ("frac", 1.5)):
        got = c.get(f"{FACTS}/{made[name]['id']}")
        stored = got.json()["value"]["v"]
        assert stored == v and type(stored) is type(v), (name, got.text)
    texts = dict(n.sql("SELECT entity, value_v FROM facts WHERE entity LIKE ?", (f"num:{t}:%",)))
    assert texts[f"num:{t}:int"] == "42" and texts[f"num:{t}:float"] == "42.0"
    assert texts[f"num:{t}:exp"] == "1e+20"


# --------------------------------------------------------------------------- GET /v1/facts


def test_list_filters_and_cursor_pagination(n: ServedNode):
    t = tag()
    rows = [fact(f"list:{t}:{e}", f"{e}{r}{s}", relation=f"rel:{t}:{r}", scope=sc, source=f"src:{t}:{s}")
            for e in ("a", "b") for r in ("x", "y") for s in ("p", "q") for sc in ("local", "public")]
    posted = n.client().post(FACTS, json={"facts": rows}).json()["facts"]
    assert len(posted) == 16

    def where(pred) -> list[str]:
        return [f["id"] for f in posted if pred(f)]

    def got(**params: Any) -> list[str]:
        return [f["id"] for f in listed(n, **params)]

    assert got(entity=f"list:{t}:a") == where(lambda f: f["entity"] == f"list:{t}:a")
    assert got(relation=f"rel:{t}:x") == where(lambda f: f["relation"] == f"rel:{t}:x")
    assert got(source=f"src:{t}:q") == where(lambda f: f["source"] == f"src:{t}:q")
    assert got(source=f"src:{t}:q", scope="public") == where(
        lambda f: f["source"] == f"src:{t}:q" and f["scope"] == "public")
    both = listed(n, entity=f"list:{t}:b", relation=f"rel:{t}:y", source=f"src:{t}:p", scope="local")
    assert [f["id"] for f in both] == where(lambda f: (f["entity"], f["relation"], f["source"], f["scope"]) ==
                                           (f"list:{t}:b", f"rel:{t}:y", f"src:{t}:p", "local"))
    assert len(both) == 1
    assert [f["id"] for f in listed(n, scope="local", limit=500)] != []
    assert all(f["scope"] == "team" for f in listed(n, scope="team"))
    for f in both:
        assert {"seq", "received_from", "origin_node_id", "cid", "hlc"} <= set(f)

    # Cursor pagination over one entity: limit 3, each page after the last, in seq order.
    got, cursor, pages = [], None, 0
    while True:
        params = {"entity": f"list:{t}:a", "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = n.client().get(FACTS, params=params).json()
        pages += 1
        got += page["facts"]
        cursor = page["cursor"]
        if not page["has_more"]:
            break
    assert [f["id"] for f in got] == where(lambda f: f["entity"] == f"list:{t}:a") and pages == 3
    assert [f["seq"] for f in got] == sorted(f["seq"] for f in got)
    end = n.client().get(FACTS, params={"entity": f"list:{t}:a", "cursor": cursor}).json()
    assert end == {"facts": [], "cursor": cursor, "has_more": False, "total": 8}

    more = n.client().post(FACTS, json={"facts": [fact(f"more:{t}:{i}", i, "number") for i in range(40)]})
    assert more.status_code == 201, more.text
    assert len(n.client().get(FACTS).json()["facts"]) == 50  # the default limit (the node holds 56)
    assert_error(n.client().get(FACTS, params={"cursor": "abc"}), 422, "invalid_cursor")
    for bad in ("0", "501", "x"):
        assert assert_error(n.client().get(FACTS, params={"limit": bad}), 422, "invalid_request")["field"] == "limit"
    assert_error(n.client().get(FACTS, params={"scope": "galaxy"}), 422, "invalid_scope")


def test_get_one_fact_and_404(n: ServedNode):
    created = n.client().post(FACTS, json=fact(f"one:{tag()}", "v1")).json()
    got = n.client().get(f"{FACTS}/{created['id']}")
    assert got.status_code == 200
    assert {k: got.json()[k] for k in created} == created
    for missing in (str(uuid.uuid4()), "x" * 300, "%00"):
        body = assert_error(n.client().get(f"{FACTS}/{missing}"), 404, "fact_not_found")
        assert set(body) == ERROR_KEYS


def test_facts_permissions(n: ServedNode):
    def key(perms: str) -> str:
        res = n.cli("apikey", "create", "--permissions", perms, "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)["key"]

    reader, writer, auditor = key("facts:read"), key("facts:write"), key("audit:read")
    body = fact(f"perm:{tag()}")
    res = n.client(reader).post(FACTS, json=body)
    assert assert_error(res, 403, "permission_required")["permission"] == "facts:write"
    res = n.client(writer).post(FACTS, json=body)
    assert res.status_code == 201
    fid = res.json()["id"]
    assert_error(n.client(writer).get(FACTS), 403, "permission_required")
    assert_error(n.client(writer).get(f"{FACTS}/{fid}"), 403, "permission_required")
    assert_error(n.client(auditor).post(FACTS, json=body), 403, "permission_required")
    assert n.client(reader).get(f"{FACTS}/{fid}").status_code == 200
    assert n.client(reader).get(FACTS).status_code == 200
    with httpx.Client(base_url=n.url, transport=httpx.HTTPTransport(local_address="127.0.9.1")) as anon:
        assert anon.post(FACTS, json=body).status_code == 401
        assert anon.get(FACTS).status_code == 401


def test_facts_are_append_only_in_the_database(n: ServedNode):
    created = n.client().post(FACTS, json=fact(f"append:{tag()}", "keep")).json()
    for statement, params in (("UPDATE facts SET value_v = 'changed' WHERE id = ?", (created["id"],)),
                              ("DELETE FROM facts WHERE id = ?", (created["id"],)), ("DELETE FROM facts", ())):
        with pytest.raises(SqlError, match="append-only"):
            n.sql(statement, params)
    assert n.client().get(f"{FACTS}/{created['id']}").json()["value"]["v"] == "keep"


# --------------------------------------------------------------------------- CLI


def test_cli_facts_add_and_list(n: ServedNode):
    t = tag()
    res = n.cli("facts", "add", f"cli:{t}", "answer", "42", "--type", "number", "--scope", "company", "--json")
    assert res.returncode == 0, res.stderr
    added = json.loads(res.stdout)
    assert added["value"]["v"] == 42 and type(added["value"]["v"]) is int and added["scope"] == "company"
    assert isinstance(added["seq"], int) and CID_RE.fullmatch(added["cid"])
    again = n.cli("facts", "add", f"cli:{t}", "answer", "42", "--type", "number", "--scope", "company")
    assert again.returncode == 0 and "Already stored" in again.stdout and added["id"] in again.stdout
    res = n.cli("facts", "add", f"cli:{t}", "ratio", "0.5", "--type", "number", "--json")
    assert json.loads(res.stdout)["value"]["v"] == 0.5

    # The server sees what the CLI stored in the same database file.
    assert n.client().get(f"{FACTS}/{added['id']}").json()["cid"] == added["cid"]
    out = n.cli("facts", "list", "--entity", f"cli:{t}", "--json")
    assert out.returncode == 0, out.stderr
    items = json.loads(out.stdout)
    assert [f["relation"] for f in items] == ["answer", "ratio"]
    human = n.cli("facts", "list", "--entity", f"cli:{t}")
    assert "answer" in human.stdout and "SCOPE" in human.stdout
    assert "No facts." in n.cli("facts", "list", "--entity", f"nothing:{t}").stdout

    for args in (["facts", "add", "e", "r", "abc", "--type", "number"],
                 ["facts", "add", "e", "r", "v", "--valid-until", "garbage"],
                 ["facts", "add", "e", "r", "v", "--confidence", "1.5"],
                 ["facts", "add", "e", "r", "v", "--scope", "galaxy"]):
        res = n.cli(*args)
        assert res.returncode in (1, 2), (args, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr, res.stderr
    assert listed(n, entity="e") == []


def _crafted_token(key: Ed25519PrivateKey, claims: dict) -> str:
    def seg(obj: dict) -> str:
        return b64url_encode(json.dumps(obj, separators=(",", ":")).encode())

    signing_input = f"{seg({'alg': 'EdDSA', 'typ': 'JWT'})}.{seg(claims)}"
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode()))}"


@pytest.fixture
def p(n: ServedNode, start_node) -> ServedNode:
    """A second node; it and ``n`` have registered and approved each other."""
    peer = start_node("p")
    for host, wk in ((n, peer.well_known()), (peer, n.well_known())):
        rec = host.client().post("/v1/federation/peers", json=wk["declaration"])
        assert rec.status_code == 201, rec.text
        ok = host.client().post(f"/v1/federation/peers/{rec.json()['peer_id']}/approve",
                                json={"pubkey_fingerprint": wk["pubkey_fingerprint"]})
        assert ok.status_code == 200, ok.text
    return peer


def test_cli_token_mint_and_inspect(n: ServedNode, p: ServedNode):
    wk_n, wk_p = n.well_known(), p.well_known()
    secret = private_key_text(n.target)

    path = "/v1/federation/facts?limit=5"
    res = n.cli("token", "mint", "--peer", wk_p["node_id"], "--method", "GET", "--path", path, "--json")
    assert res.returncode == 0, res.stderr
    minted = json.loads(res.stdout)
    assert minted["peer"] == wk_p["node_id"] and minted["scopes"] == ["company", "public"]
    token = minted["token"]
    assert secret not in res.stdout + res.stderr

    # The token is real: the peer accepts it once for that request.
    with httpx.Client(base_url=p.url) as c:
        assert c.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert c.get(path, headers={"Authorization": f"Bearer {token}"}).json()["error"] == "nonce_already_seen"

    res = n.cli("token", "inspect", token, "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["problems"] == []
    assert report["header"]["alg"] == "EdDSA" and report["header"]["kid"] == wk_n["key_id"]
    claims = report["claims"]
    assert (claims["iss"], claims["sub"], claims["htm"], claims["htu"]) == (wk_n["node_id"], wk_p["node_id"], "GET", path)
    assert claims["exp"] - claims["iat"] == 60_000
    human = n.cli("token", "inspect", token)
    assert human.returncode == 0 and "no problem found" in human.stdout
    assert secret not in res.stdout + human.stdout + human.stderr

    # Human output is the bare token; --scopes narrows it; a token from stdin is read too.
    bare = n.cli("token", "mint", "--peer", wk_p["node_id"], "--scopes", "public", "--ttl", "5")
    assert bare.returncode == 0 and bare.stdout.strip().count(".") == 2
    piped = run_cli("token", "inspect", "-", "--json", input=bare.stdout)
    assert piped.returncode == 0, piped.stderr
    piped_claims = json.loads(piped.stdout)["claims"]
    assert piped_claims["scopes"] == ["public"] and piped_claims["exp"] - piped_claims["iat"] == 5000

    # Problems: exit 1, the problem codes, no traceback, no key material.
    key = Ed25519PrivateKey.from_private_bytes(b64url_decode(secret))
    t = int(time.time() * 1000)
    expired = _crafted_token(key, {"iss": wk_n["node_id"], "sub": wk_p["node_id"], "iat": t - 200_000,
                                   "exp": t - 100_000, "nonce": str(uuid.uuid4()), "scopes": ["public"]})
    for bad, code in ((expired, "token_expired"), ("garbage", "malformed_token"), ("a.b.c", "malformed_token"),
                      ("", "peer_token_required")):
        res = n.cli("token", "inspect", bad, "--json")
        assert res.returncode == 1, (bad, res.stdout, res.stderr)
        assert code in [p_["code"] for p_ in json.loads(res.stdout)["problems"]]
        assert "Traceback" not in res.stderr and secret not in res.stdout + res.stderr
    human = n.cli("token", "inspect", expired)
    assert human.returncode == 1 and "token_expired" in human.stdout

    res = n.cli("token", "mint", "--peer", "stigmem:node:nobody")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    res = n.cli("token", "mint", "--peer", wk_p["node_id"], "--scopes", "galaxy")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    # The public key verifies the minted token (a sanity check that it is the node's key).
    h, pl, sig = token.split(".")
    public_key_from_b64(wk_n["federation_pubkey"]).verify(b64url_decode(sig), f"{h}.{pl}".encode())


def test_cli_token_mint_refuses_a_bad_ttl_without_a_traceback(n: ServedNode, p: ServedNode):
    for ttl in ("3601", "0", "-1", "nan"):
        res = n.cli("token", "mint", "--peer", p.well_known()["node_id"], "--ttl", ttl)
        assert res.returncode in (1, 2) and "Traceback" not in res.stderr, (ttl, res.stderr)


def test_same_content_with_another_valid_until_is_a_new_fact(n: ServedNode):
    body = {"entity": f"stigmem://t/vu/{uuid.uuid4().hex}", "relation": "memory:x",
            "value": {"type": "string", "v": "x"}, "source": "s", "scope": "company"}
    first = n.client().post("/v1/facts", json=body)
    again = n.client().post("/v1/facts", json=body)
    later = n.client().post("/v1/facts", json={**body, "valid_until": "2999-01-01T00:00:00Z"})
    assert (first.status_code, again.status_code, later.status_code) == (201, 200, 201)
    assert again.json()["id"] == first.json()["id"] != later.json()["id"]
    assert later.json()["cid"] == first.json()["cid"] and later.json()["valid_until"] == "2999-01-01T00:00:00Z"


def test_nul_characters_in_text_values_are_refused(n: ServedNode):
    body = {"entity": "stigmem://t/nul", "relation": "memory:x", "value": {"type": "text", "v": "a\x00b"},
            "source": "s", "scope": "company"}
    res = n.client().post("/v1/facts", json=body)
    assert res.status_code == 422 and res.json()["field"] == "value.v"


def _values():
    return st.recursive(
        st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats()
        | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=5), max_leaves=20)


def _fact_like():
    field = st.sampled_from(["entity", "relation", "source", "scope", "confidence", "valid_until", "value"])
    value = st.fixed_dictionaries({}, optional={"type": st.sampled_from(
        ["string", "text", "number", "boolean", "datetime", "ref", "null", "x"]) | _values(),
        "v": _values(), "interpret_as": st.sampled_from(["content", "instruction", "x"]) | _values()})
    return st.builds(lambda base, k, v: {**base, k: v},
                     st.just({"entity": "stigmem://t/fz", "relation": "r", "value": {"type": "string", "v": "x"},
                              "source": "s", "scope": "company"}), field, _values() | value)


def test_inv2_no_fact_body_gives_a_5xx(n: ServedNode):
    client = n.client()

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=_values() | _fact_like() | st.builds(lambda fs: {"facts": fs}, st.lists(_fact_like(), max_size=4)))
    def check(body):
        res = client.post(FACTS, content=json.dumps(body, allow_nan=True).encode())
        assert res.status_code < 500, (body, res.text)
        if res.status_code >= 400:
            err = res.json()
            assert err["error"] == err["detail"] and err["message"]
            assert err["error"] != "internal_validation_error", (body, err)  # a crash of the checks

    check()
