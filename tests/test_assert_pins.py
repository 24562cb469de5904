"""Pinned bytes of asserted facts: what ``LocalFacts.assert_many`` stores (every column, the
served entry text, the origin signature) and answers, for a fixed batch, key, clock and ids.

The values were computed by the node itself and must never change: peers (ours and reference
nodes) verify the stored entries byte for byte, and a faster assert path has to produce exactly
these rows.  Ed25519 is deterministic, so the signatures are pinned too (key seed
``bytes(range(32))``).  The batch holds every value type, non-ASCII and escaped text, a
``valid_until`` with an offset, a duplicate inside the batch and the same content with two
``valid_until`` texts naming one instant (one fact) and another instant (a new fact).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stigmem_node.clock import Clock
from stigmem_node.encoding import b64url_encode
from stigmem_node.identity import NodeIdentity
from stigmem_node.keys import key_id_of
from stigmem_node.local_facts import LocalFacts
from stigmem_node.signing import SigningPool
from stigmem_node.store import Store
from stigmem_node.store.facts import INSERT_COLS, LOOKUP_CHUNK
from stigmem_node.store.meta import KeyRow
from tests.engines import Engine

NODE_ID = "stigmem:node:4be895b3-188b-47a3-8a96-2b20584a25ec"
NODE_URL = "http://127.0.0.1:18101"
_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PRIVATE = b64url_encode(_KEY.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                           serialization.NoEncryption()))
PUBLIC = b64url_encode(_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


class FixedClock(Clock):
    def time(self) -> float:
        return 1795399679.090120


def _fact(i: int, vtype: str, v: Any, **extra: Any) -> dict[str, Any]:
    return {"entity": f"stigmem://pin/é/{i}", "relation": "pin:r", "value": {"type": vtype, "v": v},
            "source": "agent:pin", **extra}


BATCH: list[dict[str, Any]] = [
    _fact(0, "number", 42, confidence=0.9, scope="company"),
    _fact(1, "number", 42.0, scope="public", valid_until="2027-03-01T10:00:00+01:00"),
    _fact(2, "number", 1e-07, confidence=0.25),
    _fact(3, "string", "plain", scope="company"),
    _fact(4, "text", 'Grüße "q" \\ \n\t \x01 \x7f \u2028 😀', scope="team", confidence=0.5),
    _fact(5, "boolean", True),
    _fact(6, "null", None, valid_until="2027-03-01T09:00:00Z"),
    _fact(7, "datetime", "2026-01-02T03:04:05+02:00"),
    _fact(8, "ref", "stigmem://pin/other", value_extra=1),
    {**_fact(9, "string", "instr"), "value": {"type": "string", "v": "instr", "interpret_as": "instruction"}},
    _fact(0, "number", 42, confidence=0.9, scope="company"),  # a duplicate inside the batch
    _fact(1, "number", 42.0, scope="public", valid_until="2027-03-01T09:00:00.000Z"),  # same instant: same fact
    _fact(1, "number", 42.0, scope="public", valid_until="2027-03-01T09:00:01Z"),  # another instant: new fact
]
CREATED = [True] * 10 + [False, False, True]
SAME_AS = {10: 0, 11: 1}

# sha256 of the stored rows (INSERT_COLS, by seq) and of the answered facts (without seq),
# each as compact JSON; and one stored entry in full, to show what the hashes cover.
ROWS_SHA256 = "1a9971abf8bd74597f44f8de1ec8f125f6d59aaf650d311c203e3ac39b405e10"
ANSWER_SHA256 = "fb3dea226026fde5a03468c21f769a60d320298f9f66655fd3b4595b17148009"
ENTRY_4 = (
    '{"fact":{"id":"pin-004","entity":"stigmem://pin/é/4","relation":"pin:r","value":{"type":"text","v":"'
    'Grüße \\"q\\" \\\\ \\n\\t \\u0001 \x7f \u2028 😀","interpret_as":"content"},"source":"agent:pin","timestamp":"2026-1'
    '1-23T02:07:59.090120Z","hlc":"1795399679090.004","received_from":null,"valid_until":null,"confidence'
    '":0.5,"scope":"team","origin_node_id":"stigmem:node:4be895b3-188b-47a3-8a96-2b20584a25ec","cid":"sha'
    '256:19f7ef4345020ed97e220130f4fba7dcb51cc09462de4ed5e82a6909452e51fe"},"origin":{"tenant":"default",'
    '"node_id":"stigmem:node:4be895b3-188b-47a3-8a96-2b20584a25ec","allowed_scopes":["team"],"allowed_ten'
    'ants":["default"],"entity_uri":"http://127.0.0.1:18101"},"origin_sig":"GFHTYnCzsCLyc_lSqcTvmXsmC6uQ7'
    '7GaEXbLQDEIcm31Xs76X8p18USfeFHmr-hFS3w1uNO8XDg03R04g5prBA","origin_manifest":null,"origin_key_proof"'
    ':null}'
)
SIG_4 = "GFHTYnCzsCLyc_lSqcTvmXsmC6uQ77GaEXbLQDEIcm31Xs76X8p18USfeFHmr-hFS3w1uNO8XDg03R04g5prBA"


@pytest.fixture(params=[0, 3], ids=["signed-serially", "signed-by-4-threads"])
def local(engine: Engine, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalFacts]:
    """Every pin holds whether a batch is signed in the calling thread or shared with a pool."""
    store = Store(engine.url("pins") or tmp_path / "pins.db")
    identity = NodeIdentity(NODE_ID, NODE_URL, KeyRow(key_id_of(PUBLIC), PUBLIC, PRIVATE, "2026-11-23T02:00:00Z",
                                                       "active", None), [])
    ids = iter(f"pin-{i:03d}" for i in range(1000))
    pool = SigningPool(request.param)
    yield LocalFacts(store, identity, FixedClock(), new_ids=lambda n: [next(ids) for _ in range(n)],
                     sign_later=pool.start)
    pool.close()
    store.close()


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _rows(local: LocalFacts) -> list[list[Any]]:
    return [list(r) for r in local.store.db.all(f"SELECT {INSERT_COLS} FROM facts ORDER BY seq")]


def test_stored_rows_entries_and_signatures_of_a_batch_never_change(local: LocalFacts) -> None:
    stored = local.assert_many(local.validate_batch(BATCH))
    assert [s.created for s in stored] == CREATED
    for dup, first in SAME_AS.items():
        assert stored[dup].fact == stored[first].fact
    seqs = [s.fact["seq"] for s in stored if s.created]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    rows = _rows(local)
    assert _sha(rows) == ROWS_SHA256
    assert _sha([{k: v for k, v in s.fact.items() if k != "seq"} for s in stored]) == ANSWER_SHA256
    assert (rows[4][15], rows[4][14]) == (ENTRY_4, SIG_4)
    assert json.loads(rows[4][15])["fact"] == {k: v for k, v in stored[4].fact.items() if k != "seq"}
    for row in rows:  # each entry is the compact JSON text of its own parse (nothing else spliced in)
        assert _dumps(json.loads(row[15])) == row[15]
    for s in stored:  # each answer's text is the text of its fact, as a JSON response writes it
        assert s.text == _dumps(s.fact)


def test_the_same_batch_again_stores_nothing_and_answers_the_stored_facts(local: LocalFacts) -> None:
    first = local.assert_many(local.validate_batch(BATCH))
    rows = _rows(local)
    again = local.assert_many(local.validate_batch(list(reversed(BATCH))))
    assert not any(s.created for s in again)
    assert [s.fact for s in reversed(again)] == [s.fact for s in first]
    assert _rows(local) == rows
    # Stored facts and new ones in one batch: the new ones only are created.
    more = local.assert_many(local.validate_batch([BATCH[3], _fact(20, "string", "new"), BATCH[3]]))
    assert [s.created for s in more] == [False, True, False]
    assert more[0].fact == first[3].fact and more[1].fact["seq"] > max(s.fact["seq"] for s in first)
    assert [s.text for s in more] == [_dumps(s.fact) for s in more]


def test_post_answers_are_the_json_response_bytes(start_node) -> None:
    n = start_node("n")
    batch = [*BATCH, BATCH[0]]
    for body in ({"facts": batch}, {"facts": batch}, BATCH[4], BATCH[4]):
        res = n.client().post("/v1/facts", json=body)
        assert res.status_code in (200, 201), res.text
        assert res.headers["content-type"] == "application/json"
        assert res.content == _dumps(res.json()).encode("utf-8")
    got = n.client().post("/v1/facts", json={"facts": batch}).json()
    assert (got["created"], got["duplicates"], len(got["facts"])) == (0, len(batch), len(batch))
    assert list(got) == ["facts", "created", "duplicates"]


def test_lone_surrogates_are_refused_however_the_body_spells_them(start_node) -> None:
    n = start_node("n")
    good = json.dumps({"facts": [_fact(30, "string", "x")]})
    bad_texts = [
        good.replace('"x"', '"\\ud800"').encode(),  # an escape
        good.replace('"x"', '"\\uDC00 tail"').encode(),  # an upper-case low-surrogate escape
        good.encode().replace(b'"x"', b'"\xed\xa0\x80"'),  # an encoded surrogate's bytes
        good.replace('"x"', '"\\ud800"').encode("utf-16-le"),  # UTF-16 text (json.loads reads it)
        good.replace('"x"', '"\ud800"').encode("utf-16-le", "surrogatepass"),  # a raw one in UTF-16
    ]
    for raw in bad_texts:
        res = n.client().post("/v1/facts", content=raw, headers={"content-type": "application/json"})
        assert (res.status_code, res.json()["error"]) == (400, "invalid_json"), raw
    # Text that only looks close is taken: a Hangul letter (bytes ED 95 9C) and an escaped pair.
    for v, stored in (("\ud55c", "\ud55c"), ("\\ud83d\\ude00", "\U0001f600")):
        raw = good.replace('"x"', f'"{v}"').encode()
        res = n.client().post("/v1/facts", content=raw, headers={"content-type": "application/json"})
        assert res.status_code == 201, res.text
        assert res.json()["facts"][0]["value"]["v"] == stored


def test_the_batched_lookup_finds_own_facts_by_cid_and_expiry_across_chunks(local: LocalFacts) -> None:
    facts = local.store.facts
    # A received copy of fact 2's content (another origin's), stored first: never an own fact's duplicate.
    inp = local.validate_batch(BATCH[2:3])[0]
    with local.store.transaction():
        facts.insert_many([("recv-0", inp.cid, inp.entity, inp.relation, inp.value_type, inp.value_v, inp.interpret_as,
                            inp.source, "2026-11-23T02:00:00Z", "1795399600000.000", None, inp.confidence, inp.scope,
                            "stigmem:node:peer", "sig", "{}", "stigmem:node:peer", "2026-11-23T02:00:00Z")])
    first = local.assert_many(local.validate_batch(BATCH[:3]))
    assert [s.created for s in first] == [True, True, True]
    rows = [r for r in _rows(local) if r[16] is None]
    contents = [(r[2], r[3], r[1], r[10]) for r in rows]  # (entity, relation, cid, valid_until)
    own = [(c[2], c[3]) for c in contents]
    noise = [(rows[0][2], rows[0][3], f"sha256:{i:064x}", None) for i in range(LOOKUP_CHUNK * 2 + 7)]
    found = facts.local_by_contents([*noise[:LOOKUP_CHUNK + 3], contents[0], *noise[LOOKUP_CHUNK + 3:], contents[1],
                                     (*contents[1][:3], None), contents[2]])
    assert sorted(found) == sorted(own)  # (cid, another valid_until) is not fact 1
    assert [found[k].id for k in own] == [s.fact["id"] for s in first]
    again = local.assert_many(local.validate_batch(BATCH[:3]))
    assert [(s.created, s.fact) for s in again] == [(False, s.fact) for s in first]


def _assert_each_signed_by(key: Ed25519PrivateKey, rows: list[list[Any]]) -> None:
    """Each row's signature, in its column and in its entry, is the one ``key`` gives its own fields."""
    from stigmem_node import origin as om

    for r in rows:
        entry = json.loads(r[15])
        o = entry["origin"]
        expected = om.sign_origin(key, fact_id=r[0], cid=r[1], entity_uri=o["entity_uri"], origin_node_id=r[13],
                                  origin_allowed_scopes=o["allowed_scopes"],
                                  origin_allowed_tenants=o["allowed_tenants"], origin_tenant=o["tenant"],
                                  valid_until=r[10])
        assert r[14] == entry["origin_sig"] == expected


def test_every_fact_of_a_large_batch_carries_its_own_signature_in_input_order(local: LocalFacts) -> None:
    """A full batch: every row carries the signature its own fields get, in its entry too, in
    input order, under the ids the node was given."""

    n = 437
    batch = [_fact(1000 + i, "number", i) for i in range(n)]
    stored = local.assert_many(local.validate_batch(batch))
    assert all(s.created for s in stored) and len(stored) == n
    rows = _rows(local)
    assert [r[0] for r in rows] == [s.fact["id"] for s in stored] == [f"pin-{i:03d}" for i in range(n)]
    _assert_each_signed_by(_KEY, rows)



def test_re_signing_after_a_rotation_gives_every_fact_the_new_keys_signature(local: LocalFacts) -> None:
    """``resign_all`` signs its batches with the same signer as asserts: every entry ends up
    with the signature the new key gives its own fields, across batch boundaries."""

    local.assert_many(local.validate_batch([_fact(2000 + i, "number", i) for i in range(150)]))
    new_key = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    new_public = b64url_encode(new_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                                  serialization.PublicFormat.Raw))
    new_private = b64url_encode(new_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                      serialization.NoEncryption()))
    local.identity = NodeIdentity(NODE_ID, NODE_URL, KeyRow(key_id_of(new_public), new_public, new_private,
                                                            "2026-11-24T02:00:00Z", "active", None), [])
    assert local.resign_all(batch=64) == 150
    _assert_each_signed_by(new_key, _rows(local))
