"""The texts an assert builds directly are the texts their definitions give.

- The origin-signature payload assembled from its strings is the RFC 8785 text of the
  tuple: the same bytes as ``encoding.jcs`` and the ``rfc8785`` package give, for any text
  (escapes, non-ASCII, astral characters, lists in any order), and the same refusal of a
  lone surrogate.  Values that are not plain strings take the general ``jcs`` path.
- The CID hashes ``json.dumps(sort_keys=True, compact, ensure_ascii=False)`` of its eight
  members, for any text and confidence.
- A new fact's wire text is ``json.dumps`` of ``fact_wire(new_fact(...))``, for any valid input.
- A new fact id is a UUID4 in its canonical text.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
import rfc8785
from hypothesis import event, given, settings
from hypothesis import strategies as st

from stigmem_node.encoding import b64url_encode, jcs, sha256_hex
from stigmem_node.errors import ValidationError
from stigmem_node.facts import (
    Fact,
    Origin,
    compute_cid,
    fact_wire,
    local_fact_text,
    new_fact,
    validate_new_fact,
)
from stigmem_node.origin import ORIGIN_TUPLE_VERSION, fact_origin_signed, origin_sig_payload
from stigmem_node.uuid7 import uuid7, uuid7s

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


def _general(f: dict[str, Any]) -> dict[str, Any]:
    return {"cid": f["cid"], "entity_uri": f["entity_uri"], "fact_id": f["fact_id"],
            "origin_allowed_scopes": sorted(f["origin_allowed_scopes"]),
            "origin_allowed_tenants": sorted(f["origin_allowed_tenants"]), "origin_node_id": f["origin_node_id"],
            "origin_tenant": f["origin_tenant"], "tv": ORIGIN_TUPLE_VERSION, "valid_until": f["valid_until"]}


@settings(max_examples=300, deadline=None)
@given(cid=TEXT, entity_uri=TEXT, fact_id=TEXT, origin_node_id=TEXT, origin_tenant=TEXT,
       origin_allowed_scopes=st.lists(TEXT, max_size=4), origin_allowed_tenants=st.lists(TEXT, max_size=4),
       valid_until=st.none() | TEXT)
def test_the_assembled_payload_is_the_rfc8785_text_of_the_tuple(**f: Any) -> None:
    payload = origin_sig_payload(**f)
    assert payload == jcs(_general(f)) == rfc8785.dumps(_general(f))


def test_a_lone_surrogate_is_refused_as_jcs_refuses_it() -> None:
    f = {"cid": "c", "entity_uri": "u", "fact_id": "\ud800", "origin_allowed_scopes": ["company"],
         "origin_allowed_tenants": ["default"], "origin_node_id": "n", "origin_tenant": "default", "valid_until": None}
    with pytest.raises(UnicodeEncodeError):
        jcs(_general(f))
    with pytest.raises(UnicodeEncodeError):
        origin_sig_payload(**f)


class _Text(str):
    __slots__ = ()


def test_values_that_are_not_plain_strings_take_the_general_path() -> None:
    f = {"cid": _Text("c"), "entity_uri": "u", "fact_id": "id", "origin_allowed_scopes": ("team", "company"),
         "origin_allowed_tenants": ["default"], "origin_node_id": "n", "origin_tenant": "default",
         "valid_until": "2027-03-01T09:00:00Z"}
    assert origin_sig_payload(**f) == jcs(_general(f))
    with pytest.raises(TypeError):  # a number is refused, as jcs refuses it
        origin_sig_payload(**{**f, "valid_until": 5})


@settings(max_examples=300, deadline=None)
@given(entity=TEXT, relation=TEXT, value_type=TEXT, value_v=TEXT, source=TEXT, scope=TEXT, interpret_as=TEXT,
       confidence=st.floats(allow_nan=False, allow_infinity=False) | st.integers(-10**6, 10**6))
def test_the_cid_hashes_the_sorted_compact_json_of_its_members(**f: Any) -> None:
    body = {**f, "confidence": float(f["confidence"])}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    assert compute_cid(**f) == "sha256:" + sha256_hex(text.encode("utf-8"))


def test_the_cid_refuses_what_json_refuses() -> None:
    f = {"entity": "e", "relation": "r", "value_type": "string", "value_v": "v", "source": "s", "scope": "company"}
    with pytest.raises(ValueError):
        compute_cid(**f, confidence=float("nan"))
    with pytest.raises(UnicodeEncodeError):
        compute_cid(**{**f, "value_v": "\ud800"}, confidence=1.0)
    assert compute_cid(**{**f, "entity": _Text("e")}, confidence=1) == compute_cid(**f, confidence=1.0)


def test_a_new_fact_id_is_a_time_ordered_uuid7_in_canonical_text() -> None:
    now = 1_795_399_600_123
    ids = {uuid7(now) for _ in range(1000)} | set(uuid7s(1000, now)) | set(uuid7s(1, now + 1))
    assert len(ids) == 2001 and uuid7s(0, now) == []
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 7, uuid.RFC_4122)
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", text)
        assert parsed.int >> 80 in (now, now + 1)
    # Every random position takes every value it may: the variant nibble's two random bits too.
    assert {t[19] for t in ids} == set("89ab")
    assert all(len({t[i] for t in ids}) == 16 for i in (15, 16, 17, 20, 21, 22, *range(24, 36)))
    earlier, later = uuid7(now), uuid7(now + 1)
    assert earlier < later  # ids made later sort after, as text


NAME = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=30).filter(str.strip)
VALUE = st.one_of(
    st.tuples(st.just("number"), st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)),
    st.tuples(st.sampled_from(["string", "text"]), st.text(st.characters(exclude_categories=("Cs",)), max_size=40)),
    st.tuples(st.just("boolean"), st.booleans()),
    st.tuples(st.just("null"), st.none()),
    st.tuples(st.just("ref"), st.from_regex(r"[a-z]{1,8}://[a-z0-9/]{1,20}", fullmatch=True)),
    st.tuples(st.just("datetime"), st.sampled_from(["2026-01-02", "2026-01-02T03:04:05.5+02:00"])),
)


@settings(max_examples=400, deadline=None)
@given(entity=NAME, relation=NAME, source=NAME, value=VALUE, interpret_as=st.sampled_from([None, "content", "instruction"]),
       confidence=st.none() | st.floats(0, 1) | st.sampled_from([0, 1]),
       scope=st.none() | st.sampled_from(["local", "team", "company", "public"]),
       valid_until=st.none() | st.sampled_from(["2027-03-01T10:00:00+01:00", "2027-03-01T09:00:00.123456789Z"]),
       fact_id=NAME, hlc=st.from_regex(r"[0-9]{13}\.[0-9]{3}", fullmatch=True),
       received_from=st.none() | st.sampled_from(["stigmem:node:peer-é", 'n:"q"\\']))
def test_a_new_facts_text_is_the_json_of_its_wire_form(entity: str, relation: str, source: str, value: Any,
                                                        interpret_as: str | None, confidence: Any, scope: Any,
                                                        valid_until: Any, fact_id: str, hlc: str,
                                                        received_from: str | None) -> None:
    """For a new fact, and for a received one as stored (with its sender)."""
    body = {"entity": entity, "relation": relation, "source": source, "confidence": confidence, "scope": scope,
            "value": {"type": value[0], "v": value[1], "interpret_as": interpret_as}, "valid_until": valid_until}
    try:
        inp = validate_new_fact(body)
    except ValidationError:
        event("refused by validation")
        return
    made = {"fact_id": fact_id, "timestamp": "2026-11-23T02:07:59.090120Z", "hlc": hlc, "origin_node_id": "n:é"}
    fact = new_fact(inp, **made)
    wire = {**fact_wire(fact), "received_from": received_from}
    expected = json.dumps(wire, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    assert local_fact_text(inp, cid=inp.cid, **made, received_from=received_from) == expected
    assert local_fact_text(fact, cid=fact.cid, **made, received_from=received_from) == expected


@settings(max_examples=300, deadline=None)
@given(cid=TEXT, entity_uri=TEXT.filter(bool), fact_id=TEXT, origin_node_id=TEXT, origin_tenant=TEXT,
       origin_allowed_scopes=st.lists(TEXT, max_size=4), origin_allowed_tenants=st.lists(TEXT, max_size=4),
       valid_until=st.none() | TEXT)
def test_the_bytes_a_check_worker_verifies_are_the_signed_tuple(**f: Any) -> None:
    """``fact_origin_signed`` (the signature, then the tuple, built around each origin block's
    cached text) gives the RFC 8785 bytes of the tuple, or None where jcs refuses it."""
    origin = Origin(f["origin_tenant"], f["origin_node_id"], tuple(f["origin_allowed_scopes"]),
                    tuple(f["origin_allowed_tenants"]), f["entity_uri"])
    fact = Fact(f["fact_id"], f["cid"], "e", "r", "string", "v", "content", "s", "t", "h", f["valid_until"], 1.0,
                "public", f["origin_node_id"])
    signature = b64url_encode(bytes(range(64)))
    try:
        expected: bytes | None = bytes(range(64)) + rfc8785.dumps(_general(f))
    except rfc8785.CanonicalizationError:
        expected = None
    assert fact_origin_signed(fact, origin, signature) == expected


def test_an_origin_block_holding_lists_signs_the_same_tuple() -> None:
    """An origin block is cached by its value; one that cannot be (lists instead of tuples)
    takes the general path, to the same bytes."""
    fact = Fact("id-1", "sha256:" + "a" * 64, "e", "r", "string", "v", "content", "s", "t", "h", None, 1.0,
                "public", "n")
    as_tuples = Origin("default", "n", ("public", "company"), ("default",), "http://127.0.0.1:9")
    as_lists = Origin("default", "n", ["public", "company"], ["default"], "http://127.0.0.1:9")  # type: ignore[arg-type]
    signature = b64url_encode(bytes(64))
    assert fact_origin_signed(fact, as_lists, signature) == fact_origin_signed(fact, as_tuples, signature) is not None
