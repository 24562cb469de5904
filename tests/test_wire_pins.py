"""Pinned wire bytes: the CID, the origin-signature payload and signature, and the manifest's
signed bytes for integer, float, string, boolean and null facts.

These values were computed by the node itself and must never change: a changed byte would
make every peer (ours and reference nodes) reject facts the node already stores and serves.
Ed25519 is deterministic, so the signatures are pinned too (key seed ``bytes(range(32))``).
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stigmem_node.encoding import b64url_encode, jcs
from stigmem_node.facts import new_fact, validate_new_fact
from stigmem_node.origin import origin_for, origin_sig_payload, sign_fact_origin

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
NODE_ID = "stigmem:node:4be895b3-188b-47a3-8a96-2b20584a25ec"
ENTITY_URI = "http://127.0.0.1:18101"

# (type, v, confidence, valid_until as posted, value_v, cid, origin_sig).  valid_until is
# signed as posted; '2027-03-01T09:00:00.000000Z' is also the text every fact posted with
# '2027-03-01T10:00:00+01:00' was stored and signed with while the node normalised it, so
# these pins are the bytes of those stored facts too.
PINS: list[tuple[str, Any, float, str | None, str, str, str]] = [
    ('number', 42, 1.0, '2027-03-01T09:00:00.000000Z', '42', 'sha256:2c7bc0ecd84067c84b86735105b4df512f8628d5c8acbb5d89a42cab3bcb0968', 'gVl2rlKUZfzXNoZVUeadBWVgldV3_w4jTdaCag8wotj2HaN36qmM7ozrOTFhDTcQDTuBMnTT2LY2F346mUIXBA'),
    ('number', -7, 0.25, None, '-7', 'sha256:f600024e7cd12e1bde71107f5bf82719e00ac448630a67bc02ab22abd321f748', '_oCoBXZQ8AkwOo0OKMMy-1tbHmnf_LHzbf4vwf9b1Q_szf2nKlmhgHfOo5saLXvw8lyMbZgC0mwHPBHqKG4zDA'),
    ('number', 9223372036854775807, 1.0, '2027-03-01T09:00:00.000000Z', '9223372036854775807', 'sha256:4d7f4a2001c6ab23bbbbe7a8d059ad715e81b1a5b26ce83ee1e4ddc997dcecdd', 'aGGzzymoei-8rhlzBPFMVAcm_aKw3hRouo8sck686JIb4hmOJr5YL6kFtnFzxeWdd8F3PC7YrVDdlRlNCgMhBQ'),
    ('number', 0, 0.25, None, '0', 'sha256:32518831a24f05e3b60707029a0157429b842a6c10bfe02ec8539ac195691a8b', 'ZrPB-kgwX4Y9Pdh3D32Z0_Fj4u_iFIJRhJKgXUv4KB0rBXiQ7gr07sKGZD3HpM6PTitrijwsH45yMcJX78PtBA'),
    ('number', 42.0, 1.0, '2027-03-01T09:00:00.000000Z', '42.0', 'sha256:bcd0686ed5c8ffdd6935891cc2bdfda4604fda23f00c38808d4b2681f85d7036', 'mOA5rfqYDBVaVEcodxocRb2QGRZG7y3CTKlZhbQVWyavyKSKoyXYGaxcHrbq1MShLls71W_wTDV5dQuvg_QcAg'),
    ('number', 1e-06, 0.25, None, '1e-06', 'sha256:40611399a4c7f22399b5b9047e8d2bd7e1f019edfa244a8999eaf87b4486b7b0', '9oFchkmI0clCBS7lbJ9uKaBbTzmfjiv53Ha4XciLmu-Qg90mxIouiSc5N0Fi_LSLQBzBVqzBnHTZpoBGW6OoBg'),
    ('number', 1e-07, 1.0, '2027-03-01T09:00:00.000000Z', '1e-07', 'sha256:009d9967abdebca84a06c701b647edd77a7e6b138669ac9d59f43e0b0683d3de', 'jby0mycRQevX2JiUs5ZjHLO-iBTosMacGeoPYSLdxrbhRtrKTdlTnHrXJbtKF2JAlX73dE289boEukaM6yHXBw'),
    ('number', 1e+21, 0.25, None, '1e+21', 'sha256:b36c974461bbfc7d5a4296849779903d784982cd09e8c7f282509fe48cb7354a', '7g1QDFUyEVJQ0BNiIESlqj9Xh826TGN7MMOYsvfT6WXKFi9fFxzemos5n2sQwIBpJKNTnd_X1TSWwrh20G68Ag'),
    ('number', 1e+20, 1.0, '2027-03-01T09:00:00.000000Z', '1e+20', 'sha256:fd45633eded49e628082b458557e5cae6e3aae47c270922d75638536d93d8e8b', 'AJLfPa5DE5KTdmIUC1CHFUhYv3pKflDawhCgoWhWILNJZgjFjcaPn3FJdFUqGHGpaTxnUYUooHVcuzbJfhrYCw'),
    ('number', -0.0, 0.25, None, '-0.0', 'sha256:0cb06d8ee943fe3e36203c8a31a4e5fc7329690bf406c83e446ef5b0e625affa', 'gAh4yaradKiuwyyaJxcCujrZOqKQDCDygXq70CgDcs-Ku-_go1Yci-M6d7MHYNQ9sG3r0ID0QOzfwp3DnlHeAQ'),
    ('number', 5e-324, 1.0, '2027-03-01T09:00:00.000000Z', '5e-324', 'sha256:cdc6fdbfbcf99cc15993aae4da1c7440076c123bbc8d36f83d00ecd30430920c', 'QfTWwW_k4JH6DKY32bHteafPg6UPeaebLzqQuJAUS4YsBUyX0J28eP0MDBPn3xhCkKnaX4lJuNgGSxxCO_nRAw'),
    ('number', 333333333.3333333, 0.25, None, '333333333.3333333', 'sha256:77b2fb6a94f12b576c4104da0941ddad25c22ca72d8fe9dc677713f80ad014dd', 'ozb_OIfJUQ6S2fkjh1jH6rb-1FoicJYVXjkXHTXPTxaIk0MAf9yd1ttctItPUqqM45OgaSaXgrTmtD99HgPaBg'),
    ('number', 0.1, 1.0, '2027-03-01T09:00:00.000000Z', '0.1', 'sha256:132b18d9a0fe8b1cc8458e4edda6eb216feedaee19a0f07503b497f23fd2ee7a', '0a5NfLn5rHoCR9pQP5K-8fkAGggkmKAm2nyxVLIkeD9B0GAL4kFemkz6_a75x3EfAroHJ6CwJiD3waGFaIngBQ'),
    ('number', 1.7976931348623157e+308, 0.25, None, '1.7976931348623157e+308', 'sha256:1c98cefa1677b38c000c51cbd753aab346c7a1d9f48e880920a293e903d7cd2a', 'nkwiYTsomICWISg0v9s5Q9634QI27nNgumdCcI9Ket1UQ3dhNX2X273HdfUcBcA9Hba2Jk_j3SQ0fraas7CjBA'),
    ('string', 'plain', 1.0, '2027-03-01T09:00:00.000000Z', 'plain', 'sha256:dc9f47c9164732956ec487c9d57de4169792e68261eab69f2e93ce7faf8c57bc', 'o6KNE3edTBWsQQtl9-AhEnDOjrFoa69cLrTh_xeXz7KPYVgELJqOeq_dNwWoubqwNyCXuoLaYeZbbKXoAznwDw'),
    ('text', 'Grüße "q" \\ \n\t \x01 \x7f \u2028 😀', 0.25, None, 'Grüße "q" \\ \n\t \x01 \x7f \u2028 😀', 'sha256:4db0e48a562a404b5a92c0cd8cbeedaacfe4fc75d372aba0ff4196eef6769eb7', 'CV3eSJWLAHvMeB-kfge5XbaXoKv7mBlfrDQeH9R5M34SIEHio2LOjnB97XA4nDRiPhh98ao1DwRmOuNKbHoPAQ'),
    ('boolean', True, 1.0, '2027-03-01T09:00:00.000000Z', 'true', 'sha256:28cbbdaead685bfbaccc5cb460276335e964024ad97bdc746ce18103633a220e', 'HOhiIe-b8N9Cd_fChAXVq-3hHcHqK6bzWakGR_NHNdoRUrO6_-cEm7sIW76Sv_nxQuDe_6GSSKbexoRZL610BQ'),
    ('null', None, 0.25, None, 'null', 'sha256:efcea5633e2fcb508e385a635e52ec350be0def5790d0470b161e6a5d577087a', 'QeSt8HR0Hzq8DrMY-dn02Jlj6zRvU6nQcnEm7oFHOIFoG6cmXmDg2AELfqRNSew6m5iM31N0DoR6vW2hZoavBg'),
]


def _body(i: int, vtype: str, v: Any, confidence: float, valid_until: str | None) -> dict[str, Any]:
    return {"entity": "stigmem://pin/é", "relation": "pin:r", "value": {"type": vtype, "v": v}, "source": "agent:pin",
            "confidence": confidence, "scope": "company", "valid_until": valid_until}


@pytest.mark.parametrize("i", range(len(PINS)), ids=[f"{p[0]}-{p[4][:24]}" for p in PINS])
def test_cid_and_origin_signature_of_stored_facts_never_change(i: int) -> None:
    vtype, v, confidence, valid_until, value_v, cid, sig = PINS[i]
    fact = new_fact(validate_new_fact(_body(i, vtype, v, confidence, valid_until)), origin_node_id=NODE_ID,
                    hlc="1795399679090.000", timestamp="2026-11-23T02:07:59.090120Z", fact_id=f"pin-{i}")
    assert (fact.value_v, fact.cid) == (value_v, cid)
    origin = origin_for(fact, node_id=NODE_ID, entity_uri=ENTITY_URI)
    assert sign_fact_origin(KEY, fact, origin) == sig


def test_valid_until_is_signed_as_posted_and_the_normalised_text_keeps_its_signature() -> None:
    vtype, v, confidence, stored_text, _, cid, stored_sig = PINS[0]
    posted = "2027-03-01T10:00:00+01:00"  # the same instant as stored_text
    fact = new_fact(validate_new_fact(_body(0, vtype, v, confidence, posted)), origin_node_id=NODE_ID,
                    hlc="1795399679090.000", timestamp="2026-11-23T02:07:59.090120Z", fact_id="pin-0")
    assert fact.valid_until == posted and fact.cid == cid  # the CID never covers valid_until
    origin = origin_for(fact, node_id=NODE_ID, entity_uri=ENTITY_URI)
    sig = sign_fact_origin(KEY, fact, origin)
    assert sig == ("MEl9ttg675wlB_UX3IQ_V1ac1FDaXpYGAIGBX5VWjb-rCykYENNzKA7s3rzT8g1cXfV57pl_oWlwbvlK4dj5Dg")
    assert sig != stored_sig and stored_text != posted


def test_origin_sig_payload_with_escapes_and_non_ascii_never_changes() -> None:
    payload = origin_sig_payload("id-é\u2028", "sha256:" + "0" * 64, "https://nœud.example/ä", "stigmem:node:ü",
                                 ["team", "company"], ["default", 'ténant"\\'], 'ténant"\\\x7f\x1f',
                                 "2026-12-01T00:00:00.000000Z")
    assert payload == (
        b'{"cid":"sha256:0000000000000000000000000000000000000000000000000000000000000000",'
        b'"entity_uri":"https://n\xc5\x93ud.example/\xc3\xa4","fact_id":"id-\xc3\xa9\xe2\x80\xa8",'
        b'"origin_allowed_scopes":["company","team"],"origin_allowed_tenants":["default","t\xc3\xa9nant\\"\\\\"],'
        b'"origin_node_id":"stigmem:node:\xc3\xbc","origin_tenant":"t\xc3\xa9nant\\"\\\\\x7f\\u001f","tv":"2.1",'
        b'"valid_until":"2026-12-01T00:00:00.000000Z"}'
    )


MANIFEST_BODY = {
    "entities": ["http://127.0.0.1:8765", "stigmem:node:43e632c2-50a6-4504-9e25-c62ad3503e3d"],
    "entity_uri": "http://127.0.0.1:8765", "expires_at": "2026-12-23T03:39:51Z", "issued_at": "2026-11-23T03:39:51Z",
    "key_id": "sha256:55195d0e06a9b943a7b0be4af7e5bf11", "public_key": "7FlDj8o2ECesLRyuWkOeWmlyXf6ESjU5bv0WRxWwLkI",
    "rotation_events": [],
}


def test_manifest_signed_bytes_never_change() -> None:
    # The example of docs/protocol.md, "Manifest".
    signed = jcs(MANIFEST_BODY)
    assert signed == (
        b'{"entities":["http://127.0.0.1:8765","stigmem:node:43e632c2-50a6-4504-9e25-c62ad3503e3d"],'
        b'"entity_uri":"http://127.0.0.1:8765","expires_at":"2026-12-23T03:39:51Z","issued_at":"2026-11-23T03:39:51Z",'
        b'"key_id":"sha256:55195d0e06a9b943a7b0be4af7e5bf11","public_key":"7FlDj8o2ECesLRyuWkOeWmlyXf6ESjU5bv0WRxWwLkI",'
        b'"rotation_events":[]}'
    )
    assert b64url_encode(KEY.sign(signed)) == (
        "LWus-D5JFfeEs3GNV_TFesw4ryk19aLVWwI_a4OsmlebKetfZfv7Hhv20rmJtzF2WWsF3quUHieHvuariFQMAQ")
