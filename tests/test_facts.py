"""Fact model, validation, CID v2, origin signature and HLC (stigmem_node.facts).

The CID and origin-signature vectors below were computed with the reference node's own
code (PyPI stigmem-node==0.9.0a12, run in its own virtual environment) and are hard-coded,
so these tests need nothing but this package.  ``test_reference_accepts_our_wire`` runs
the reference's receiver code on what we serve, when its venv is present (else skipped).
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import threading
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stigmem_node.clock import Clock
from stigmem_node.encoding import b64url_encode
from stigmem_node.errors import ValidationError
from stigmem_node.facts import (
    Fact,
    Origin,
    compute_cid,
    expiry_key,
    fact_from_wire,
    fact_wire,
    is_instruction,
    new_fact,
    validate_new_fact,
)
from stigmem_node.hlc import HLC, format_hlc, parse_hlc
from stigmem_node.origin import (
    entry_from_wire,
    origin_for,
    origin_sig_payload,
    pull_entry,
    sign_fact_origin,
    sign_origin,
    verify_fact_origin,
    verify_origin,
)
from stigmem_node.values import MAX_VALUE_BYTES, decode_value

try:
    import orjson
except ImportError:  # pragma: no cover
    orjson = None

NODE_ID = "stigmem:node:4be895b3-188b-47a3-8a96-2b20584a25ec"
ENTITY_URI = "http://127.0.0.1:18101"
TS = "2026-11-23T02:07:59.090120Z"


def _body(entity: str, relation: str, vtype: str, v: Any, source: str = "agent:x", **kw: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"type": vtype, "v": v}
    if "interpret_as" in kw:
        value["interpret_as"] = kw.pop("interpret_as")
    return {"entity": entity, "relation": relation, "value": value, "source": source, **kw}


# name, POST body, value_v and CID as the reference stores and computes them for that body.
KAT = [
    ("string", _body("stigmem://demo/item/1", "memory:note", "string", "fact 1 from A", "stigmem://demo/agent/a", confidence=0.9, scope="company"),
     "fact 1 from A", "sha256:c04af8f94d99caa5490edfb877b267c5059f932ec397f7670c7ae2a78f81b383"),
    ("text_unicode", _body("stigmem://demo/Ünïcødé/😀", "memory:note", "text", 'Grüße, 世界! "quoted" \\ back\nnew line\ttab \u0001 \u2028 😀', confidence=0.75, scope="public"),
     'Grüße, 世界! "quoted" \\ back\nnew line\ttab \u0001 \u2028 😀', "sha256:3a42ac1892fee41ab96b4e9992d1af79bc80bebc8ce51194f0f42129d5250bb8"),
    ("int_42", _body("stigmem://demo/item/2", "memory:count", "number", 42, confidence=1.0, scope="company"),
     "42", "sha256:3f3189e698485a281472e75a42491d2e0ea7a6be6469d24dbca1f4f6c11f645d"),
    ("float_42_0", _body("stigmem://demo/item/2", "memory:count", "number", 42.0, confidence=1.0, scope="company"),
     "42.0", "sha256:56c3f8207d8b10ba865fc5d99746362af068ef0878dcee38e1a047ce8431b30d"),
    ("float_1_5", _body("stigmem://demo/item/3", "memory:ratio", "number", 1.5, confidence=0.5, scope="public"),
     "1.5", "sha256:5f7036754b4888e56abe3a168bd889c049185349944930b6c3f575b56b4a2b54"),
    ("float_1e20", _body("stigmem://demo/item/4", "memory:big", "number", 1e20, confidence=0.9, scope="company"),
     "1e+20", "sha256:416eac054f213b607754b848a1c27a76b6f7223f6564b892d1f54e09928995b3"),
    ("neg_zero", _body("stigmem://demo/item/5", "memory:zero", "number", -0.0, confidence=0.9, scope="company"),
     "-0.0", "sha256:c5a025a2d599a67ee20bc15ec95a242b8b6ecdb65bf1bf24dacea71756ba659f"),
    ("int_neg", _body("stigmem://demo/item/5", "memory:temp", "number", -7, confidence=0.9, scope="team"),
     "-7", "sha256:f796a2b4e8008e53da33b00d6c5c9c2316b76ae18d53249e56753ab4b03610da"),
    ("float_small", _body("stigmem://demo/item/6", "memory:eps", "number", 1e-7, confidence=0.9, scope="company"),
     "1e-07", "sha256:042194b1003b162af9297a2adbd83d6ca93044af33856c2b7b9d3c50eb0e5200"),
    ("bool_true", _body("stigmem://demo/item/7", "memory:flag", "boolean", True, confidence=0.9, scope="company"),
     "true", "sha256:6a4aa829239723f85dfbf6038eb230a97185410d48a280d3a50a680ad4f948a0"),
    ("bool_false", _body("stigmem://demo/item/7", "memory:flag", "boolean", False, confidence=0.9, scope="company"),
     "false", "sha256:0f89002b71110d46cade07a469a7028db7121c5134c25ad16a03d618e526ed31"),
    ("null", _body("stigmem://demo/item/8", "memory:nothing", "null", None, confidence=0.9, scope="company"),
     "null", "sha256:2f3bb783b5b4919d1066e8a6a7f7a721a2375f9bee442c13de2ef1ad96c1afb6"),
    ("datetime", _body("stigmem://demo/item/9", "memory:when", "datetime", "2026-11-23T02:07:58Z", confidence=0.9, scope="company"),
     "2026-11-23T02:07:58Z", "sha256:795c5de2c4dfbaf1cf9872bd6f1ceeeaf19c58e0437df198a8741e7af66d9f90"),
    ("ref", _body("stigmem://demo/item/10", "memory:related", "ref", "stigmem://demo/item/1", confidence=0.9, scope="public"),
     "stigmem://demo/item/1", "sha256:55718f1017ef7a644cb13643fdaf7fe4e0ba7e4d267e0f0c8007a30e9b88edbf"),
    ("instruction", _body("stigmem://demo/item/11", "memory:howto", "string", "always reply in French", interpret_as="instruction", confidence=0.9, scope="company"),
     "always reply in French", "sha256:0ac644f88a98dfc38b38fc2c994ac24da03ab707c8a6686df20161a19aed8e1a"),
    ("confidence_default", _body("stigmem://demo/item/12", "memory:note", "string", "x"),
     "x", "sha256:b545dd8ffd675a349f21cceae079f135a9be1b7e40388e77a9d9ed65ffd83751"),
    ("confidence_int_1", _body("stigmem://demo/item/12", "memory:note", "string", "x", confidence=1, scope="local"),
     "x", "sha256:b545dd8ffd675a349f21cceae079f135a9be1b7e40388e77a9d9ed65ffd83751"),
    ("confidence_zero", _body("stigmem://demo/item/13", "memory:note", "string", "retracted", confidence=0, scope="company"),
     "retracted", "sha256:de89546921821bae1c7dde07bdc73796bc8c6a7f0c10905907821fcc8f18d03b"),
    ("confidence_tiny", _body("stigmem://demo/item/13", "memory:note", "string", "tiny", confidence=1e-05, scope="company"),
     "tiny", "sha256:124e0122203841c062cca80c8e6425177f5fd6402c39b93b5a147cb217696c16"),
    ("empty_string", _body("stigmem://demo/item/14", "memory:note", "string", "", confidence=0.9, scope="company"),
     "", "sha256:b07cb02ab0e38b2b346df170f878a3fc4c07c802b099fd2a5998f89edc731f33"),
]

# Number facts asserted on a reference node, as it serves them (it serves every number as a
# float): (posted JSON, wire v, CID the reference computed, value_v we must store or None
# if no receiver can accept it).  entity stigmem://ref/n, relation memory:n, source agent:r,
# confidence 0.8, scope public.
REF_SERVED_NUMBERS = [
    ("42", 42.0, "sha256:d9fe77b7c38d475a3f7d93f8ced544f7bce676ff2b942a730b85dc05c5b4c739", "42"),
    ("-7", -7.0, "sha256:b0d62f24ab31355a84a554bf7f2feb7fe5e9441c58ffb3c127ae02d4375ace2a", "-7"),
    ("0", 0.0, "sha256:72e97ae12e9670a8adcafcccb231e14e6cd43b5f5c8d4cd8cbcdfccb1cada562", "0"),
    ("100000000000000000000", 1e20, "sha256:26908886c093a0c84dce1dbbd4759ef881ce1887e4bbe55c72ef2e4d9f887b89", "100000000000000000000"),
    ("9007199254740993", 9007199254740992.0, "sha256:18e1026a7498c6bf51911127fa975091f10579e06b30d03686c9e9f2b8b785c9", None),
    ("42.0", 42.0, "sha256:8937de3a319be5b92117ba4b50954aefb81eb35f8f93a86ce41926febe7eb363", "42.0"),
    ("1.5", 1.5, "sha256:c332a7c8d88b8c7e7b2c71a2b5a9a1d79f9d62e54a847ffd575833bddc8b5e81", "1.5"),
]

# origin_sig computed by the reference's sign_origin with the Ed25519 key whose seed is
# bytes(range(32)), over the fact below (Ed25519 is deterministic).
SIG_KEY_SEED = bytes(range(32))
SIG_FACT_ID = "e2399474-7a6b-4b0e-9d55-0c1d2e3f4a5b"
SIG_CID = "sha256:c04af8f94d99caa5490edfb877b267c5059f932ec397f7670c7ae2a78f81b383"
SIG_SCOPES = ["public", "company"]
SIG_VECTORS = [
    (None, "tVVunIxs_MBfM3b2XG-SsOIENGafwQrTcHFUjl3s41y0kl3dmstMvjSlLB5ZQw6u3ZdMpCefPpuK8Rov-sUyAQ"),
    ("2026-12-01T00:00:00.000000Z", "wP914bcW45RJPp_4aqzCmqby-pBQyKeBZTTUCEAZf3lNJ3UASY5KIsxKY5-X1aCgq2lOqUk_yAMfJpVzYHLXCA"),
]
SIG_PAYLOAD_NULL = (
    b'{"cid":"sha256:c04af8f94d99caa5490edfb877b267c5059f932ec397f7670c7ae2a78f81b383",'
    b'"entity_uri":"http://127.0.0.1:18101","fact_id":"e2399474-7a6b-4b0e-9d55-0c1d2e3f4a5b",'
    b'"origin_allowed_scopes":["company","public"],"origin_allowed_tenants":["default"],'
    b'"origin_node_id":"stigmem:node:4be895b3-188b-47a3-8a96-2b20584a25ec","origin_tenant":"default",'
    b'"tv":"2.1","valid_until":null}'
)


class FixedClock(Clock):
    def __init__(self, ms: int) -> None:
        super().__init__()
        self.ms = ms

    def time(self) -> float:
        return self.ms / 1000

    def now_ms(self) -> int:
        return self.ms


def _fact(body: dict[str, Any], *, hlc: str = "1795399679090.000", fact_id: str | None = None) -> Fact:
    return new_fact(validate_new_fact(body), origin_node_id=NODE_ID, hlc=hlc, timestamp=TS, fact_id=fact_id)


def _roundtrip(obj: Any, encoder: str = "json") -> Any:
    if encoder == "orjson":
        return orjson.loads(orjson.dumps(obj))
    return json.loads(json.dumps(obj))


# --------------------------------------------------------------------------- CID vectors


@pytest.mark.parametrize("name,body,value_v,cid", KAT, ids=[k[0] for k in KAT])
def test_cid_known_answers_match_reference(name: str, body: dict, value_v: str, cid: str) -> None:
    inp = validate_new_fact(body)
    assert inp.value_v == value_v
    assert inp.cid == cid
    fact = new_fact(inp, origin_node_id=NODE_ID, hlc="1795399679090.000", timestamp=TS)
    assert fact.cid == cid == fact.computed_cid()


@pytest.mark.parametrize("name,body,value_v,cid", KAT, ids=[k[0] for k in KAT])
@pytest.mark.parametrize("encoder", ["json", "orjson"])
def test_our_wire_recomputes_to_the_same_cid(name: str, body: dict, value_v: str, cid: str, encoder: str) -> None:
    if encoder == "orjson" and orjson is None:
        pytest.skip("orjson not installed")
    fact = _fact(body)
    wire = _roundtrip(fact_wire(fact), encoder)
    # (a) our receiver recomputes the same CID and stores the same text
    back = fact_from_wire(wire, origin_node_id=NODE_ID)
    assert back.cid == cid and back.value_v == value_v
    assert back.value_type == fact.value_type and back.interpret_as == fact.interpret_as
    # (b) a reference receiver stores str(decoded v) (booleans/null aside) and hashes that
    v = wire["value"]["v"]
    ref_value_v = "null" if fact.value_type == "null" else ("true" if v else "false") if fact.value_type == "boolean" else str(v)
    assert ref_value_v == value_v
    assert compute_cid(
        entity=wire["entity"], relation=wire["relation"], value_type=wire["value"]["type"], value_v=ref_value_v,
        source=wire["source"], scope=wire["scope"], confidence=float(wire["confidence"]),
        interpret_as=wire["value"]["interpret_as"],
    ) == cid


def test_integer_and_float_stay_distinct_on_the_wire() -> None:
    as_int = fact_wire(_fact(_body("e:x", "r:x", "number", 42)))
    as_float = fact_wire(_fact(_body("e:x", "r:x", "number", 42.0)))
    assert type(as_int["value"]["v"]) is int and type(as_float["value"]["v"]) is float
    assert json.dumps(as_int["value"]["v"]) == "42" and json.dumps(as_float["value"]["v"]) == "42.0"
    assert as_int["cid"] != as_float["cid"]


@pytest.mark.parametrize("posted,wire_v,cid,stored", REF_SERVED_NUMBERS, ids=[r[0] for r in REF_SERVED_NUMBERS])
def test_reference_number_facts_as_served(posted: str, wire_v: float, cid: str, stored: str | None) -> None:
    wire = {
        "id": "6af43018-0000-4000-8000-000000000001", "entity": "stigmem://ref/n", "relation": "memory:n",
        "value": {"type": "number", "v": wire_v, "interpret_as": "content"}, "source": "agent:r",
        "timestamp": "2026-11-23T02:07:59.090120+00:00", "hlc": "1795399679090.12", "received_from": None,
        "valid_until": None, "confidence": 0.8, "scope": "public", "attested_key_id": None, "cid": cid,
        "derived_from": [], "warnings": [],
    }
    wire = json.loads(json.dumps(wire))
    if stored is None:
        with pytest.raises(ValidationError) as exc:
            fact_from_wire(wire)
        assert exc.value.code == "cid_mismatch" and exc.value.field == "cid"
        return
    fact = fact_from_wire(wire, origin_node_id="stigmem:node:ref")
    assert fact.value_v == stored and fact.cid == cid
    assert fact.hlc == "1795399679090.012"
    assert fact.timestamp == wire["timestamp"]
    # and we serve it back in a form our own nodes accept with the same CID
    again = fact_from_wire(_roundtrip(fact_wire(fact)))
    assert again.value_v == stored and again.cid == cid


def test_integer_written_without_fraction_by_a_jcs_encoder_is_accepted() -> None:
    fact = _fact(_body("e:x", "r:x", "number", 42.0))
    wire = _roundtrip(fact_wire(fact))
    wire["value"]["v"] = 42  # what an RFC 8785 encoder writes for 42.0
    back = fact_from_wire(wire)
    assert back.value_v == "42.0" and back.cid == fact.cid


def test_tampered_fact_is_a_cid_mismatch() -> None:
    wire = _roundtrip(fact_wire(_fact(KAT[0][1])))
    for path, new in [("entity", "stigmem://demo/item/2"), ("relation", "memory:other"), ("source", "agent:evil"),
                      ("scope", "public"), ("confidence", 0.95), ("value.v", "fact 2"), ("value.interpret_as", "instruction"),
                      ("value.type", "text")]:
        w = copy.deepcopy(wire)
        if path.startswith("value."):
            w["value"][path[6:]] = new
        else:
            w[path] = new
        with pytest.raises(ValidationError) as exc:
            fact_from_wire(w)
        assert exc.value.code == "cid_mismatch", path
    # fields outside the CID do not matter to it
    w = copy.deepcopy(wire)
    w["timestamp"] = "2030-01-01T00:00:00+00:00"
    w["valid_until"] = "2030-01-01T00:00:00Z"
    w["id"] = "another-id"
    fact_from_wire(w)


def test_decode_value() -> None:
    assert decode_value("number", "42") == 42 and type(decode_value("number", "42")) is int
    assert type(decode_value("number", "42.0")) is float
    assert decode_value("number", "1e+20") == 1e20
    assert math.copysign(1, decode_value("number", "-0.0")) == -1
    assert type(decode_value("number", "100000000000000000000")) is float
    assert decode_value("boolean", "true") is True and decode_value("boolean", "false") is False
    assert decode_value("null", "null") is None
    assert decode_value("ref", "stigmem://x") == "stigmem://x"


# --------------------------------------------------------------------------- validation

GOOD = _body("stigmem://demo/item/1", "memory:note", "string", "hello", confidence=0.9, scope="company")


def _with(path: str, value: Any, base: dict | None = None) -> dict:
    body = copy.deepcopy(base or GOOD)
    target = body
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[part]
    if value is _DELETE:
        del target[parts[-1]]
    else:
        target[parts[-1]] = value
    return body


_DELETE = object()


@pytest.mark.parametrize(
    "vtype,v,value_v",
    [
        ("string", "plain", "plain"),
        ("string", "", ""),
        ("text", "line 1\nline 2\t\u00e9", "line 1\nline 2\t\u00e9"),
        ("number", 0, "0"),
        ("number", -2**63, str(-2**63)),
        ("number", 2**63 - 1, str(2**63 - 1)),
        ("number", 0.1, "0.1"),
        ("number", 5e-324, "5e-324"),
        ("number", 1.7976931348623157e308, "1.7976931348623157e+308"),
        ("boolean", True, "true"),
        ("boolean", False, "false"),
        ("null", None, "null"),
        ("datetime", "2026-11-23T02:07:58.123456+01:00", "2026-11-23T02:07:58.123456+01:00"),
        ("datetime", "2026-11-23", "2026-11-23"),
        ("ref", "stigmem://demo/item/1", "stigmem://demo/item/1"),
        ("ref", "urn:isbn:0451450523", "urn:isbn:0451450523"),
    ],
)
def test_every_value_type_accepted(vtype: str, v: Any, value_v: str) -> None:
    inp = validate_new_fact(_with("value", {"type": vtype, "v": v}))
    assert inp.value_type == vtype and inp.value_v == value_v and inp.interpret_as == "content"
    assert inp.value == (v if vtype != "number" else v)


def test_defaults_and_valid_until_kept_as_given() -> None:
    inp = validate_new_fact({"entity": "e:1", "relation": "r:1", "value": {"type": "null"}, "source": "s:1",
                             "confidence": None, "scope": None, "valid_until": "2026-11-23T03:07:58+01:00",
                             "garden_id": "ignored", "write_mode": "assert"})
    assert inp.confidence == 1.0 and type(inp.confidence) is float
    assert inp.scope == "local" and inp.interpret_as == "content"
    assert inp.valid_until == "2026-11-23T03:07:58+01:00"  # signed and echoed as given
    assert expiry_key(inp.valid_until) == "2026-11-23T02:07:58.000000Z"  # what the filters compare
    assert validate_new_fact(_with("valid_until", None)).valid_until is None and expiry_key(None) is None


def test_value_size_cap() -> None:
    ok = "é" * (MAX_VALUE_BYTES // 2)
    assert validate_new_fact(_with("value.v", ok)).value_v == ok
    with pytest.raises(ValidationError) as exc:
        validate_new_fact(_with("value.v", ok + "x"))
    assert (exc.value.code, exc.value.field) == ("value_too_large", "value.v")
    with pytest.raises(ValidationError) as exc:
        validate_new_fact(_with("value.v", "x" * (10 * MAX_VALUE_BYTES)))
    assert exc.value.code == "value_too_large"


NUM = _with("value", {"type": "number", "v": 1})
BAD_CASES = [
    # (body, field)
    ([], None),
    ("fact", None),
    (None, None),
    (_with("entity", _DELETE), "entity"),
    (_with("entity", ""), "entity"),
    (_with("entity", "   "), "entity"),
    (_with("entity", 5), "entity"),
    (_with("entity", "a\x00b"), "entity"),
    (_with("entity", "a\nb"), "entity"),
    (_with("entity", "x" * 2049), "entity"),
    (_with("entity", "\ud800"), "entity"),
    (_with("relation", _DELETE), "relation"),
    (_with("relation", ["memory:note"]), "relation"),
    (_with("source", _DELETE), "source"),
    (_with("source", "s\u0085"), "source"),
    (_with("value", _DELETE), "value"),
    (_with("value", "hello"), "value"),
    (_with("value", ["string", "hello"]), "value"),
    (_with("value.type", _DELETE), "value.type"),
    (_with("value.type", "integer"), "value.type"),
    (_with("value.type", None), "value.type"),
    (_with("value.interpret_as", "command"), "value.interpret_as"),
    (_with("value.interpret_as", 1), "value.interpret_as"),
    (_with("value.v", _DELETE), "value.v"),
    (_with("value.v", None), "value.v"),
    (_with("value.v", 5), "value.v"),
    (_with("value.v", "\udfff"), "value.v"),
    (_with("value", {"type": "text", "v": {"a": 1}}), "value.v"),
    (_with("value.v", True, NUM), "value.v"),
    (_with("value.v", "1", NUM), "value.v"),
    (_with("value.v", float("nan"), NUM), "value.v"),
    (_with("value.v", float("inf"), NUM), "value.v"),
    (_with("value.v", float("-inf"), NUM), "value.v"),
    (_with("value.v", 2**63, NUM), "value.v"),
    (_with("value.v", -2**63 - 1, NUM), "value.v"),
    (_with("value.v", 10**5000, NUM), "value.v"),
    (_with("value", {"type": "boolean", "v": 1}), "value.v"),
    (_with("value", {"type": "boolean", "v": "true"}), "value.v"),
    (_with("value", {"type": "null", "v": 0}), "value.v"),
    (_with("value", {"type": "null", "v": "null"}), "value.v"),
    (_with("value", {"type": "datetime", "v": "yesterday"}), "value.v"),
    (_with("value", {"type": "datetime", "v": "2026-11-23T02:07:58"}), "value.v"),
    (_with("value", {"type": "datetime", "v": "2026-13-01"}), "value.v"),
    (_with("value", {"type": "datetime", "v": 1795399679}), "value.v"),
    (_with("value", {"type": "ref", "v": ""}), "value.v"),
    (_with("value", {"type": "ref", "v": "a b"}), "value.v"),
    (_with("value", {"type": "ref", "v": "x" * 2049}), "value.v"),
    (_with("confidence", 1.5), "confidence"),
    (_with("confidence", -0.1), "confidence"),
    (_with("confidence", True), "confidence"),
    (_with("confidence", "0.9"), "confidence"),
    (_with("confidence", float("nan")), "confidence"),
    (_with("confidence", 10**400), "confidence"),
    (_with("scope", "private"), "scope"),
    (_with("scope", ["public"]), "scope"),
    (_with("valid_until", "tomorrow"), "valid_until"),
    (_with("valid_until", "2026-11-23T02:07:58"), "valid_until"),
    (_with("valid_until", 1795399679), "valid_until"),
    (_with("valid_until", "0001-01-01T00:00:00+01:00"), "valid_until"),
]


@pytest.mark.parametrize("body,field", BAD_CASES)
def test_invalid_new_fact_names_the_field(body: Any, field: str | None) -> None:
    with pytest.raises(ValidationError) as exc:
        validate_new_fact(body)
    assert exc.value.field == field
    assert exc.value.code == "invalid_fact"
    assert exc.value.message


# --------------------------------------------------------------------------- wire ingest


def _wire(body: dict | None = None, **over: Any) -> dict:
    w = _roundtrip(fact_wire(_fact(body or GOOD, fact_id="0b5f9c1e-5d7a-4b8e-9a61-2f3c4d5e6f70")))
    w.update(over)
    return w


def test_fact_wire_shape() -> None:
    fact = _fact(GOOD, fact_id="f-1")
    w = fact_wire(fact)
    assert set(w) >= {"id", "entity", "relation", "value", "source", "timestamp", "hlc", "received_from",
                      "valid_until", "confidence", "scope", "cid"}
    assert w["value"] == {"type": "string", "v": "hello", "interpret_as": "content"}
    assert w["received_from"] is None and w["id"] == "f-1" and type(w["confidence"]) is float


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda w: w.pop("id"), "id"),
        (lambda w: w.update(id=""), "id"),
        (lambda w: w.update(id="a b"), "id"),
        (lambda w: w.update(id=7), "id"),
        (lambda w: w.update(id="x" * 257), "id"),
        (lambda w: w.pop("entity"), "entity"),
        (lambda w: w.update(relation=None), "relation"),
        (lambda w: w.update(source="a\x00"), "source"),
        (lambda w: w.pop("value"), "value"),
        (lambda w: w["value"].update(type="blob"), "value.type"),
        (lambda w: w["value"].update(interpret_as="run"), "value.interpret_as"),
        (lambda w: w["value"].update(v=None), "value.v"),
        (lambda w: w["value"].update(type="number", v="1"), "value.v"),
        (lambda w: w["value"].update(type="number", v=True), "value.v"),
        (lambda w: w["value"].update(type="number", v=10**400), "value.v"),
        (lambda w: w["value"].update(type="boolean", v="true"), "value.v"),
        (lambda w: w["value"].update(type="null", v=0), "value.v"),
        (lambda w: w.pop("timestamp"), "timestamp"),
        (lambda w: w.update(timestamp="now"), "timestamp"),
        (lambda w: w.update(hlc="1795399679090.x"), "hlc"),
        (lambda w: w.update(hlc=1795399679090), "hlc"),
        (lambda w: w.update(hlc="99999999999999.0"), "hlc"),
        (lambda w: w.update(valid_until="soon"), "valid_until"),
        (lambda w: w.pop("confidence"), "confidence"),
        (lambda w: w.update(confidence=2), "confidence"),
        (lambda w: w.update(scope="everyone"), "scope"),
        (lambda w: w.pop("cid"), "cid"),
        (lambda w: w.update(cid="sha256:XYZ"), "cid"),
        (lambda w: w.update(cid=None), "cid"),
    ],
)
def test_invalid_wire_fact_names_the_field(mutate: Any, field: str) -> None:
    w = _wire()
    mutate(w)
    with pytest.raises(ValidationError) as exc:
        fact_from_wire(w)
    assert exc.value.field == field
    assert exc.value.code in ("invalid_fact", "cid_mismatch")


def test_wire_fact_keeps_signed_texts_verbatim() -> None:
    body = _with("valid_until", "2026-12-01T00:00:00Z")
    w = _wire(body, timestamp="2026-11-23T02:07:59.090120+00:00", hlc="1795399679090.7")
    w["valid_until"] = "2026-12-01T01:00:00+01:00"
    f = fact_from_wire(w, origin_node_id="stigmem:node:a")
    assert f.valid_until == "2026-12-01T01:00:00+01:00"
    assert f.timestamp == "2026-11-23T02:07:59.090120+00:00"
    assert f.hlc == "1795399679090.007"
    assert f.origin_node_id == "stigmem:node:a" and f.received_from is None


def test_wire_without_hlc_is_accepted_with_an_empty_hlc() -> None:
    w = _wire()
    del w["hlc"]
    assert fact_from_wire(w).hlc == ""
    assert fact_from_wire(_wire(hlc=None)).hlc == ""


def test_is_instruction() -> None:
    assert is_instruction(validate_new_fact(KAT[14][1]))
    assert is_instruction(validate_new_fact(_with("relation", "instruction:do")))
    assert is_instruction(validate_new_fact(_with("entity", "instruction:x")))
    assert not is_instruction(validate_new_fact(GOOD))


def test_wire_accepts_what_the_reference_serves_for_strings() -> None:
    # The reference stores and serves any string for datetime/ref and control characters
    # in names; ingest accepts them (only NUL and lone surrogates are refused).
    f = _fact(GOOD)
    w = _roundtrip(fact_wire(f))
    w["value"] = {"type": "datetime", "v": "next tuesday", "interpret_as": "content"}
    w["relation"] = "memory:\tnote"
    w["cid"] = compute_cid(entity=w["entity"], relation=w["relation"], value_type="datetime", value_v="next tuesday",
                           source=w["source"], scope=w["scope"], confidence=w["confidence"])
    assert fact_from_wire(w).value_v == "next tuesday"


def test_wire_value_size_cap() -> None:
    w = _wire()
    w["value"]["v"] = "x" * (MAX_VALUE_BYTES + 1)
    with pytest.raises(ValidationError) as exc:
        fact_from_wire(w)
    assert (exc.value.code, exc.value.field) == ("value_too_large", "value.v")


# --------------------------------------------------------------------------- origin signature


def _key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(SIG_KEY_SEED)


def _sig_args(**over: Any) -> dict[str, Any]:
    args = dict(fact_id=SIG_FACT_ID, cid=SIG_CID, entity_uri=ENTITY_URI, origin_node_id=NODE_ID,
                origin_allowed_scopes=SIG_SCOPES, origin_allowed_tenants=["default"], origin_tenant="default",
                valid_until=None)
    args.update(over)
    return args


def test_origin_sig_payload_matches_reference_bytes() -> None:
    assert origin_sig_payload(SIG_FACT_ID, SIG_CID, ENTITY_URI, NODE_ID, SIG_SCOPES, ["default"], "default", None) == SIG_PAYLOAD_NULL


@pytest.mark.parametrize("valid_until,expected", SIG_VECTORS)
def test_origin_sig_matches_reference_signature(valid_until: str | None, expected: str) -> None:
    sig = sign_origin(_key(), **_sig_args(valid_until=valid_until))
    assert sig == expected
    assert verify_origin(_key().public_key(), expected, **_sig_args(valid_until=valid_until))


@pytest.mark.parametrize(
    "change",
    [
        {"fact_id": "e2399474-7a6b-4b0e-9d55-0c1d2e3f4a5c"},
        {"cid": "sha256:" + "0" * 64},
        {"valid_until": "2026-12-01T00:00:00.000000Z"},
        {"origin_allowed_scopes": ["public", "company", "team"]},
        {"origin_allowed_scopes": ["public"]},
        {"origin_allowed_tenants": ["default", "other"]},
        {"origin_tenant": "other"},
        {"origin_node_id": "stigmem:node:evil"},
        {"entity_uri": "http://127.0.0.1:18102"},
    ],
)
def test_origin_sig_tamper_detected(change: dict) -> None:
    sig = sign_origin(_key(), **_sig_args())
    assert verify_origin(_key().public_key(), sig, **_sig_args())
    assert not verify_origin(_key().public_key(), sig, **_sig_args(**change))


def test_origin_sig_scope_order_does_not_matter_and_bad_input_is_false() -> None:
    sig = sign_origin(_key(), **_sig_args())
    assert verify_origin([_key().public_key()], sig, **_sig_args(origin_allowed_scopes=["company", "public"]))
    other = Ed25519PrivateKey.generate().public_key()
    assert not verify_origin(other, sig, **_sig_args())
    assert verify_origin([other, _key().public_key()], sig, **_sig_args())  # rotation: any pinned key
    assert not verify_origin([], sig, **_sig_args())
    for bad in ["", "!!!", sig[:-2], sig + "AA", b64url_encode(b"\0" * 64), None, 42]:
        assert not verify_origin(_key().public_key(), bad, **_sig_args())
    assert not verify_origin(_key().public_key(), sig, **_sig_args(entity_uri=""))
    assert not verify_origin(_key().public_key(), sig, **_sig_args(fact_id="\ud800"))
    assert not verify_origin(_key().public_key(), sig, **_sig_args(origin_allowed_scopes=[1, "a"]))


def test_pull_entry_round_trip_and_tamper() -> None:
    key = Ed25519PrivateKey.generate()
    fact = _fact(_with("valid_until", "2026-12-01T00:00:00Z"))
    origin = origin_for(fact, node_id=NODE_ID, entity_uri=ENTITY_URI)
    assert origin == Origin("default", NODE_ID, ("company",), ("default",), ENTITY_URI)
    entry = _roundtrip(pull_entry(fact, origin, sign_fact_origin(key, fact, origin)))
    got = entry_from_wire(entry)
    assert got.fact.cid == fact.cid and got.fact.origin_node_id == NODE_ID and got.fact.origin == origin
    assert verify_fact_origin(key.public_key(), got.fact, got.origin, got.origin_sig)
    for tamper in [
        lambda e: e["fact"].update(id="f-other"),
        lambda e: e["fact"].update(valid_until="2027-12-01T00:00:00.000000Z"),
        lambda e: e["fact"].update(valid_until=None),
        lambda e: e["origin"].update(allowed_scopes=["company", "public"]),
        lambda e: e["origin"].update(node_id="stigmem:node:other"),
    ]:
        e = copy.deepcopy(entry)
        tamper(e)
        t = entry_from_wire(e)
        assert not verify_fact_origin(key.public_key(), t.fact, t.origin, t.origin_sig)


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda e: e.pop("origin"), "origin"),
        (lambda e: e["origin"].pop("tenant"), "origin.tenant"),
        (lambda e: e["origin"].update(allowed_scopes="company"), "origin.allowed_scopes"),
        (lambda e: e["origin"].update(allowed_scopes=["company", 3]), "origin.allowed_scopes[1]"),
        (lambda e: e["origin"].update(allowed_tenants=None), "origin.allowed_tenants"),
        (lambda e: e["origin"].update(entity_uri=""), "origin.entity_uri"),
        (lambda e: e.pop("origin_sig"), "origin_sig"),
        (lambda e: e.update(origin_sig=""), "origin_sig"),
        (lambda e: e.pop("fact"), "fact"),
        (lambda e: e["fact"]["value"].update(v=3), "fact.value.v"),
        (lambda e: e["fact"].update(cid="sha256:" + "a" * 64), "fact.cid"),
    ],
)
def test_invalid_entry_names_the_field(mutate: Any, field: str) -> None:
    key = Ed25519PrivateKey.generate()
    fact = _fact(GOOD)
    origin = origin_for(fact, node_id=NODE_ID, entity_uri=ENTITY_URI)
    entry = _roundtrip(pull_entry(fact, origin, sign_fact_origin(key, fact, origin)))
    mutate(entry)
    with pytest.raises(ValidationError) as exc:
        entry_from_wire(entry)
    assert exc.value.field == field


# --------------------------------------------------------------------------- HLC


def test_hlc_format_and_parse() -> None:
    assert format_hlc(1795399679090, 7) == "1795399679090.007"
    assert format_hlc(5, 0) == "0000000000005.000"
    assert parse_hlc("1795399679090.7") == (1795399679090, 7)
    assert parse_hlc("1795399679090.007") == (1795399679090, 7)
    assert parse_hlc("1795399679090") == (1795399679090, 0)
    assert format_hlc(1795399679090, 1000) == "1795399679091.000"  # carry keeps the width
    for bad in ["", "x", "1.2.3", "-1.0", " 1.0", "1.", ".1", "1_000.0", "١٢.٣", "12345678901234.0", None, 12]:
        with pytest.raises(ValueError):
            parse_hlc(bad)


def test_hlc_many_ticks_in_one_millisecond_sort_as_text() -> None:
    clock = FixedClock(1795399679090)
    hlc = HLC(clock)
    stamps = [hlc.tick() for _ in range(1500)]  # past the 3-digit counter
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)
    assert all(len(s) == 17 for s in stamps)
    assert [parse_hlc(s) for s in stamps] == sorted(parse_hlc(s) for s in stamps)
    assert stamps[9] < stamps[10] < stamps[11]  # the reference's "X.9" > "X.10" bug
    clock.ms += 5
    after = hlc.tick()
    assert after > stamps[-1]


def test_hlc_ticks_are_the_ticks_one_by_one() -> None:
    """A batch's stamps (``ticks``) are what as many ``tick()`` calls give on the same clock,
    across the counter's carry, and the clock goes on after them."""
    one, batch = HLC(FixedClock(1795399679090)), HLC(FixedClock(1795399679090))
    assert batch.ticks(1200) == [one.tick() for _ in range(1200)]
    assert batch.ticks(0) == [] and batch.tick() == one.tick()
    batch.observe("1795399679095.004")
    assert batch.ticks(2) == ["1795399679095.005", "1795399679095.006"]


def test_hlc_restart_never_regresses() -> None:
    first = HLC(FixedClock(1795399679090))
    last = [first.tick() for _ in range(20)][-1]
    # restart with the wall clock set back by an hour, seeded from the max stored HLC
    restarted = HLC(FixedClock(1795399679090 - 3_600_000), seed=last)
    nxt = restarted.tick()
    assert nxt > last
    unseeded = HLC(FixedClock(1795399679090 - 3_600_000))
    assert unseeded.tick() < last  # what the seed protects against
    restarted.observe("0000000000001.000")  # an older HLC does not move it back
    assert restarted.tick() > nxt
    # a reference-format seed works too
    assert HLC(FixedClock(0), seed="1795399679090.12").tick() == "1795399679090.013"


def test_hlc_receive() -> None:
    clock = FixedClock(1_795_399_679_090)
    hlc = HLC(clock)
    local = hlc.tick()
    # remote ahead (within bound): adopt its wall, counter + 1
    r = hlc.receive("1795399680000.41")
    assert r == "1795399680000.042" and r > local
    # remote behind: keep ours, counter + 1
    assert hlc.receive("1795399000000.999") == "1795399680000.043"
    # same wall: max counter + 1
    assert hlc.receive("1795399680000.100") == "1795399680000.101"
    # a reference counter past our width carries into the wall
    assert hlc.receive("1795399680000.5000") == "1795399680001.000"
    # wall clock moves past everything: counter resets
    clock.ms = 1_795_399_690_000
    assert hlc.receive("1795399680000.0") == "1795399690000.000"
    with pytest.raises(ValidationError) as exc:
        hlc.receive(f"{clock.ms + 300_001}.0")
    assert exc.value.code == "hlc_skew" and exc.value.field == "hlc"
    assert hlc.receive(f"{clock.ms + 300_001}.0", max_future_ms=None) == f"{clock.ms + 300_001}.001"
    for bad in ["garbage", None, "9999999999999.999"]:
        with pytest.raises(ValidationError) as exc:
            hlc.receive(bad, max_future_ms=None)
        assert exc.value.code == "invalid_hlc"


def test_hlc_thread_safe() -> None:
    hlc = HLC(FixedClock(1_795_399_679_090))
    out: list[list[str]] = [[] for _ in range(8)]

    def run(i: int) -> None:
        for _ in range(400):
            out[i].append(hlc.tick() if i % 2 else hlc.receive("1795399679090.3"))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps = [s for part in out for s in part]
    assert len(set(stamps)) == len(stamps) == 3200
    for part in out:
        assert part == sorted(part)


# --------------------------------------------------------------------------- fuzz

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["string", "text", "number", "boolean", "datetime", "ref", "null", "content", "instruction",
                     "local", "team", "company", "public", "2026-11-23T02:07:58Z", "1795399679090.0", "\ud800",
                     "sha256:" + "0" * 64]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=5)),
    max_leaves=12,
)
FACT_KEYS = ["entity", "relation", "value", "source", "confidence", "scope", "valid_until", "id", "timestamp", "hlc", "cid"]


@st.composite
def mutated_fact(draw: Any, base: dict) -> Any:
    obj = copy.deepcopy(base)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        key = draw(st.sampled_from(FACT_KEYS + ["value.type", "value.v", "value.interpret_as"]))
        target = obj
        if key.startswith("value."):
            if not isinstance(obj.get("value"), dict):
                obj["value"] = {}
            target, key = obj["value"], key[6:]
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(json_values)
    return obj


WIRE_BASE = json.loads(json.dumps(fact_wire(new_fact(validate_new_fact(GOOD), origin_node_id=NODE_ID,
                                                     hlc="1795399679090.000", timestamp=TS))))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, mutated_fact(GOOD), mutated_fact(WIRE_BASE)))
def test_fuzz_validate_new_fact_only_raises_validation_error(obj: Any) -> None:
    try:
        inp = validate_new_fact(obj)
    except ValidationError as exc:
        assert exc.code != "internal_validation_error", exc.message  # a crash of the checks, not a verdict
        assert exc.code in ("invalid_fact", "value_too_large")
        return
    assert inp.cid.startswith("sha256:")
    # whatever we accept, our own receiver accepts from our wire with the same CID
    fact = new_fact(inp, origin_node_id=NODE_ID, hlc="1795399679090.000", timestamp=TS)
    back = fact_from_wire(_roundtrip(fact_wire(fact)))
    assert back.cid == fact.cid and back.value_v == fact.value_v
    if orjson is not None:
        assert fact_from_wire(_roundtrip(fact_wire(fact), "orjson")).value_v == fact.value_v


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, mutated_fact(WIRE_BASE)))
def test_fuzz_fact_from_wire_only_raises_validation_error(obj: Any) -> None:
    try:
        fact_from_wire(obj)
    except ValidationError as exc:
        assert exc.code != "internal_validation_error", exc.message
        assert exc.code in ("invalid_fact", "value_too_large", "cid_mismatch")


@settings(max_examples=200, deadline=None)
@given(st.one_of(json_values, st.fixed_dictionaries({"fact": st.one_of(json_values, mutated_fact(WIRE_BASE)),
                                                      "origin": json_values, "origin_sig": json_values})))
def test_fuzz_entry_from_wire_only_raises_validation_error(obj: Any) -> None:
    try:
        entry_from_wire(obj)
    except ValidationError as exc:
        assert exc.code != "internal_validation_error", exc.message
        assert exc.code in ("invalid_fact", "value_too_large", "cid_mismatch")


class _Exploding(dict):  # type: ignore[type-arg]
    """A mapping whose lookups fail with an error no check expects (a stand-in for a bug)."""

    def get(self, key: Any, default: Any = None) -> Any:
        raise KeyError(key)

    def __getitem__(self, key: Any) -> Any:
        raise KeyError(key)


def test_a_crash_in_the_checks_is_internal_validation_error_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The guard of each validator turns an unexpected exception into its own code, never
    ``invalid_fact``, and logs it with its traceback."""
    from stigmem_node.errors import InternalValidationError
    from stigmem_node.origin import origin_from_wire

    good_entry = json.loads(json.dumps(pull_entry(_fact(GOOD), origin_for(_fact(GOOD), node_id=NODE_ID,
                                                                             entity_uri=ENTITY_URI), "A" * 86)))
    bad = _Exploding({"entity": "e", "relation": "r", "source": "s", "id": "x", "tenant": "t"})
    cases = [
        (lambda: validate_new_fact(bad), None),
        (lambda: fact_from_wire(bad, field_prefix="fact."), "fact"),
        (lambda: origin_from_wire(bad), "origin"),
        (lambda: entry_from_wire({**good_entry, "origin": bad}), "origin"),
        (lambda: entry_from_wire({**good_entry, "fact": bad}), "fact"),
    ]
    for call, field in cases:
        caplog.clear()
        with caplog.at_level("ERROR", logger="stigmem_node.facts"):
            with pytest.raises(InternalValidationError) as err:
                call()
        assert err.value.code == "internal_validation_error" and err.value.field == field
        assert isinstance(err.value, ValidationError) and "KeyError" in err.value.message
        assert [r.exc_info is not None for r in caplog.records] == [True], caplog.records


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1),
                 st.floats(allow_nan=False, allow_infinity=False)))
def test_fuzz_numbers_round_trip_through_any_decoder(v: int | float) -> None:
    fact = _fact(_with("value", {"type": "number", "v": v}))
    for enc in ("json", "orjson") if orjson is not None else ("json",):
        wire = _roundtrip(fact_wire(fact), enc)
        assert str(wire["value"]["v"]) == fact.value_v  # the reference receiver's rule
        assert fact_from_wire(wire).cid == fact.cid


# --------------------------------------------------------------------------- the real reference, if installed

_REF_CHECK = r"""
import json, sys
from stigmem_node.federation.federation_ingest import _verify_inbound_cid, FederationIntegrityError
from stigmem_node.federation.origin_signature import verify_origin_signature, OriginSignatureError
data = json.loads(sys.stdin.read())
out = []
for text in data["pages"]:
    for entry in json.loads(text)["facts"]:
        try:
            _verify_inbound_cid(entry["fact"], "peer")
            verify_origin_signature(entry["origin_sig"], fact_id=entry["fact"]["id"], cid=entry["fact"]["cid"],
                                    origin=entry["origin"], valid_until=entry["fact"].get("valid_until"),
                                    allowed_pubkeys={data["pubkey"]})
            out.append("ok")
        except (FederationIntegrityError, OriginSignatureError) as exc:
            out.append(f"{entry['fact']['value']}: {exc!r}")
print(json.dumps(out))
"""


@pytest.mark.interop
def test_reference_accepts_our_wire() -> None:
    try:
        from tests.interop.refnode import _MARKER, reference_cache_dir, venv_python
    except Exception:  # pragma: no cover
        pytest.skip("interop helpers unavailable")
    venv = reference_cache_dir()
    if not (venv / _MARKER).exists():
        pytest.skip("reference venv not installed")
    key = Ed25519PrivateKey.generate()
    pub = b64url_encode(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    entries = []
    for _, body, _, _ in KAT:
        fact = _fact(_with("valid_until", "2026-12-01T00:00:00Z", body))
        origin = origin_for(fact, node_id=NODE_ID, entity_uri=ENTITY_URI)
        entries.append(pull_entry(fact, origin, sign_fact_origin(key, fact, origin)))
    page = {"v": 2, "facts": entries, "cursor": "1", "has_more": False}
    pages = [json.dumps(page, ensure_ascii=False)]
    if orjson is not None:
        pages.append(orjson.dumps(page).decode())
    proc = subprocess.run([str(venv_python(venv)), "-c", _REF_CHECK], input=json.dumps({"pubkey": pub, "pages": pages}),
                          capture_output=True, text=True, timeout=60, cwd="/tmp")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    assert results == ["ok"] * len(entries) * len(pages)
