"""Tombstones, the pure core (stigmem_node.tombstones): the signed bytes, signing and
verifying, domain separation from fact signatures, and strict parsing of wire tombstones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stigmem_node.errors import ValidationError
from stigmem_node.origin import sign_origin
from stigmem_node.tombstones import (
    Tombstone,
    TombstoneRejected,
    check_reason,
    sign_tombstone,
    tombstone_from_wire,
    tombstone_payload,
    verify_tombstone,
)

NODE = "stigmem:node:4be895b3-188b-47a3-8a96-2b20584a25ec"
FACT_ID = "0b6f3a52-8a5e-4d0e-9d61-8e0f4b1c2d3e"
CID = "sha256:" + "ab" * 32
AT = "2026-11-30T03:24:41.123456Z"


def fact_tomb(**kw: Any) -> Tombstone:
    base: dict[str, Any] = dict(kind="fact", fact_id=FACT_ID, entity=None, cid=CID, erased_at=AT,
                                origin_node_id=NODE, reason="right_to_erasure")
    base.update(kw)
    return Tombstone(**base)


def test_the_signed_bytes_are_the_jcs_of_the_t21_tuple() -> None:
    payload = tombstone_payload(**fact_tomb().signed_fields())
    assert payload == (
        '{"cid":"' + CID + '","entity":null,"erased_at":"' + AT + '","fact_id":"' + FACT_ID
        + '","kind":"fact","origin_node_id":"' + NODE + '","reason":"right_to_erasure","tv":"t2.1"}'
    ).encode()
    entity = tombstone_payload(kind="entity", fact_id=None, entity="person:ana", cid=None, erased_at=AT,
                               origin_node_id=NODE, reason="legal")
    assert entity == ('{"cid":null,"entity":"person:ana","erased_at":"' + AT + '","fact_id":null,"kind":"entity",'
                      '"origin_node_id":"' + NODE + '","reason":"legal","tv":"t2.1"}').encode()


def test_sign_and_verify_and_every_signed_field_matters() -> None:
    key = Ed25519PrivateKey.generate()
    t = fact_tomb()
    signed = Tombstone(**{**t.signed_fields(), "origin_sig": sign_tombstone(key, t)})
    assert verify_tombstone(key.public_key(), signed)
    assert verify_tombstone([Ed25519PrivateKey.generate().public_key(), key.public_key()], signed)
    assert not verify_tombstone(Ed25519PrivateKey.generate().public_key(), signed)
    assert not verify_tombstone([], signed)
    for field, other in (("fact_id", "x"), ("cid", None), ("erased_at", "2026-11-30T03:24:42Z"),
                         ("origin_node_id", "stigmem:node:other"), ("reason", "legal"), ("kind", "entity")):
        changed = Tombstone(**{**signed.to_wire(), field: other})
        assert not verify_tombstone(key.public_key(), changed), field
    for bad in (None, "", "!!", "AAAA"):
        assert not verify_tombstone(key.public_key(), Tombstone(**{**t.signed_fields(), "origin_sig": bad}))


def test_a_fact_signature_never_verifies_as_a_tombstone() -> None:
    key = Ed25519PrivateKey.generate()
    fact_sig = sign_origin(key, fact_id=FACT_ID, cid=CID, entity_uri="http://127.0.0.1:1", origin_node_id=NODE,
                           origin_allowed_scopes=["company"], origin_allowed_tenants=["default"],
                           origin_tenant="default", valid_until=None)
    assert not verify_tombstone(key.public_key(), fact_tomb(origin_sig=fact_sig))


def test_wire_round_trip() -> None:
    key = Ed25519PrivateKey.generate()
    t = fact_tomb()
    wire = {**t.to_wire(), "origin_sig": sign_tombstone(key, t)}
    parsed = tombstone_from_wire(wire)
    assert parsed.to_wire() == wire and verify_tombstone(key.public_key(), parsed)
    ent = {"kind": "entity", "entity": "person:ana", "fact_id": None, "cid": None, "erased_at": AT,
           "origin_node_id": NODE, "reason": "operator", "origin_sig": "A" * 86}
    assert tombstone_from_wire(ent).entity == "person:ana"


@pytest.mark.parametrize(("change", "field"), [
    ({"kind": "fact_and_more"}, "kind"),
    ({"fact_id": None}, "fact_id"),
    ({"fact_id": 5}, "fact_id"),
    ({"fact_id": "a\x00b"}, "fact_id"),
    ({"entity": "person:ana"}, "entity"),
    ({"erased_at": "yesterday"}, "erased_at"),
    ({"erased_at": None}, "erased_at"),
    ({"origin_node_id": "stigmem node"}, "origin_node_id"),
    ({"reason": "because"}, "reason"),
    ({"origin_sig": None}, "origin_sig"),
    ({"origin_sig": "A" * 500}, "origin_sig"),
    ({"value": "leak"}, "value"),
])
def test_wire_parsing_is_strict(change: dict[str, Any], field: str) -> None:
    wire = {**fact_tomb().to_wire(), "origin_sig": "A" * 86, **change}
    with pytest.raises(TombstoneRejected) as info:
        tombstone_from_wire(wire, field_prefix="tombstones[0].")
    assert info.value.code == "invalid_tombstone" and info.value.field == "tombstones[0]." + field


def test_entity_tombstones_name_no_fact_and_non_objects_are_refused() -> None:
    ent = {"kind": "entity", "entity": "person:ana", "fact_id": FACT_ID, "erased_at": AT, "origin_node_id": NODE,
           "reason": "operator", "origin_sig": "A" * 86}
    with pytest.raises(TombstoneRejected):
        tombstone_from_wire(ent)
    for bad in (None, [], "x", 5):
        with pytest.raises(TombstoneRejected):
            tombstone_from_wire(bad)


def test_reasons_are_a_closed_vocabulary() -> None:
    assert check_reason("legal") == "legal"
    for bad in ("", "LEGAL", None, 3, "gdpr"):
        with pytest.raises(ValidationError) as info:
            check_reason(bad)
        assert info.value.code == "invalid_erasure_reason"


def test_the_worked_example_of_protocol_md() -> None:
    """The example in docs/protocol.md (Tombstone signature), byte for byte."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    t = Tombstone(kind="fact", fact_id="5d0724ec-84e9-474c-891a-9f3df727247f", entity=None,
                  cid="sha256:9f2c0d3e5b7a1c4f6e8d0b2a4c6e8f0a1b3c5d7e9f1a3b5c7d9e1f3a5b7c9d1e",
                  erased_at="2026-11-30T03:24:41.123456Z",
                  origin_node_id="stigmem:node:43e632c2-50a6-4504-9e25-c62ad3503e3d", reason="right_to_erasure")
    payload = tombstone_payload(**t.signed_fields()).decode()
    sig = sign_tombstone(key, t)
    assert sig == "jZmg4jn2PR8_we3M7zenzVkOoqxiBB3zCdmmCoCPaxOFa6diflmeyY1oiRxKUQ876bTTb0njHlCfIP0DTm_tCQ"
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert payload in doc and sig in doc
