"""Signed peer declarations: canonical bytes, signature, freshness, garbage."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from stigmem_node import declaration as d
from stigmem_node.clock import Clock
from stigmem_node.encoding import b64url_decode, fingerprint
from stigmem_node.identity import load_or_create, public_key_from_b64
from stigmem_node.store import Store

NOW = datetime(2026, 11, 23, 2, 7, 58, tzinfo=timezone.utc)
LEEWAY = timedelta(seconds=30)


def make_identity(tmp_path, url="http://127.0.0.1:18102"):
    store = Store(tmp_path / "n.db")
    return load_or_create(store.meta, Clock(), node_id=None, node_url=url)


def test_canonical_bytes_are_sorted_compact_ascii_json():
    fields = {
        "signed_at": "2026-11-23T02:07:58Z", "node_url": "http://n\u00e9.example", "node_id": "stigmem:node:x",
        "federation_pubkey": "KEY", "allowed_scopes": ["public", "company"], "declaration_sig": "ignored",
    }
    assert d.canonical_bytes(fields) == (
        b'{"allowed_scopes":["public","company"],"federation_pubkey":"KEY","node_id":"stigmem:node:x",'
        b'"node_url":"http://n\\u00e9.example","signed_at":"2026-11-23T02:07:58Z"}'
    )


def test_signed_declaration_verifies_and_sorts_scopes(tmp_path):
    ident = make_identity(tmp_path)
    decl = d.sign(ident, ["public", "company", "public"], NOW)
    assert decl.allowed_scopes == ("company", "public")
    assert decl.signed_at == "2026-11-23T02:07:58Z"
    parsed, reason = d.verify(decl.as_dict(), NOW, leeway=LEEWAY)
    assert reason is None and parsed == decl
    # The signature is Ed25519 over exactly the canonical bytes, base64url without padding.
    assert "=" not in decl.declaration_sig
    public_key_from_b64(decl.federation_pubkey).verify(b64url_decode(decl.declaration_sig),
                                                       d.canonical_bytes(decl.as_dict()))


def test_scopes_are_verified_in_the_order_signed(tmp_path):
    """The reference signs allowed_scopes in the order given; we verify what was signed."""
    key = Ed25519PrivateKey.generate()
    from stigmem_node.encoding import b64url_encode
    from cryptography.hazmat.primitives import serialization

    pub = b64url_encode(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    fields = {"allowed_scopes": ["public", "company"], "federation_pubkey": pub, "node_id": "n",
              "node_url": "http://127.0.0.1:1", "signed_at": "2026-11-23T02:07:58Z"}
    body = {**fields, "declaration_sig": b64url_encode(key.sign(d.canonical_bytes(fields)))}
    assert d.verify(body, NOW, leeway=LEEWAY)[1] is None
    body["allowed_scopes"] = ["company", "public"]
    assert d.verify(body, NOW, leeway=LEEWAY)[1] == d.INVALID_SIGNATURE


def test_tampered_fields_are_rejected_as_invalid_signature(tmp_path):
    ident = make_identity(tmp_path)
    good = d.sign(ident, ["company"], NOW).as_dict()
    for field, value in [("node_url", "http://127.0.0.1:9"), ("node_id", "stigmem:node:other"),
                         ("allowed_scopes", ["company", "public"]), ("signed_at", "2026-11-23T02:07:59Z")]:
        assert d.verify({**good, field: value}, NOW, leeway=LEEWAY)[1] == d.INVALID_SIGNATURE, field
    other = make_identity(tmp_path / "x") if (tmp_path / "x").mkdir() is None else None
    assert d.verify({**good, "federation_pubkey": other.public_key}, NOW, leeway=LEEWAY)[1] == d.INVALID_SIGNATURE


def test_stale_and_future_declarations_are_rejected(tmp_path):
    ident = make_identity(tmp_path)
    old = d.sign(ident, ["company"], NOW - timedelta(days=7, seconds=1)).as_dict()
    assert d.verify(old, NOW, leeway=LEEWAY)[1] == d.STALE
    edge = d.sign(ident, ["company"], NOW - timedelta(days=7)).as_dict()
    assert d.verify(edge, NOW, leeway=LEEWAY)[1] is None
    future = d.sign(ident, ["company"], NOW + timedelta(seconds=31)).as_dict()
    assert d.verify(future, NOW, leeway=LEEWAY)[1] == d.FUTURE
    near = d.sign(ident, ["company"], NOW + timedelta(seconds=30)).as_dict()
    assert d.verify(near, NOW, leeway=LEEWAY)[1] is None


def test_malformed_declarations_give_reasons(tmp_path):
    good = d.sign(make_identity(tmp_path), ["company"], NOW).as_dict()
    cases = {
        d.MALFORMED: [None, [], "x", {**good, "node_id": ""}, {**good, "node_id": 5},
                      {k: v for k, v in good.items() if k != "declaration_sig"}, {**good, "allowed_scopes": []},
                      {**good, "allowed_scopes": "company"}, {**good, "node_url": "ftp://x"},
                      {**good, "signed_at": "yesterday"}],
        d.INVALID_SCOPE: [{**good, "allowed_scopes": ["company", "galaxy"]}],
        d.INVALID_PUBKEY: [{**good, "federation_pubkey": "AAAA"}, {**good, "federation_pubkey": "!!"}],
        d.INVALID_SIGNATURE: [{**good, "declaration_sig": "%%%"}, {**good, "declaration_sig": "AAAA"}],
    }
    for reason, bodies in cases.items():
        for body in bodies:
            assert d.verify(body, NOW, leeway=LEEWAY)[1] == reason, body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, mutate=st.dictionaries(st.sampled_from(list(d.SIGNED_FIELDS) + ["declaration_sig"]),
                                                 json_values, max_size=3))
def test_verify_never_raises_on_garbage(value, mutate):
    base = {"allowed_scopes": ["company"], "federation_pubkey": "A" * 43, "node_id": "n",
            "node_url": "http://127.0.0.1:1", "signed_at": "2026-11-23T02:07:58Z", "declaration_sig": "A" * 86}
    for body in (value, {**base, **mutate}):
        decl, reason = d.verify(body, NOW, leeway=LEEWAY)
        assert reason is not None


def test_fingerprint_is_sha256_of_the_base64url_text():
    import hashlib

    text = "IU0W2W9qFJ2Mu6CZch9ENBV6n4E1jCDChN_2wieX1zo"
    assert fingerprint(text) == "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    assert json.dumps(fingerprint(text)).startswith('"sha256:')


def test_small_order_public_keys_are_refused():
    """A small-order 'key' verifies a trivial signature over any message; we never accept one."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from stigmem_node.encoding import b64url_encode
    from stigmem_node.identity import _SMALL_ORDER

    for raw in sorted(_SMALL_ORDER):
        for variant in (raw, raw[:31] + bytes([raw[31] | 0x80])):
            try:
                pub = public_key_from_b64(b64url_encode(variant))
            except ValueError:
                continue
            raise AssertionError(f"weak key accepted: {variant.hex()} ({pub})")
    # The danger is real: the all-zero key accepts the all-zero signature on a good share
    # of all messages, so anyone could forge its signatures.
    from cryptography.exceptions import InvalidSignature

    zero = Ed25519PublicKey.from_public_bytes(bytes(32))
    forged = 0
    for i in range(32):
        try:
            zero.verify(bytes(64), b"message %d" % i)
            forged += 1
        except InvalidSignature:
            pass
    assert forged > 0
    body = {"allowed_scopes": ["company"], "federation_pubkey": "A" * 43, "node_id": "n",
            "node_url": "http://127.0.0.1:1", "signed_at": "2026-11-23T02:07:58Z", "declaration_sig": "A" * 86}
    assert d.verify(body, NOW, leeway=LEEWAY)[1] == d.INVALID_PUBKEY


def test_node_ids_with_spaces_control_characters_or_bare_uuids_are_refused(tmp_path):
    # These were malformed_declaration; node ids and URLs now have their own codes.
    good = d.sign(make_identity(tmp_path), ["company"], NOW).as_dict()
    for node_id in ("a b", "a\x1b[31m", "a\n", "0f8e3b9a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"):
        assert d.verify({**good, "node_id": node_id}, NOW, leeway=LEEWAY)[1] == d.INVALID_NODE_ID, node_id
    assert d.verify({**good, "node_url": "http://127.0.0.1:1/ x"}, NOW, leeway=LEEWAY)[1] == d.INVALID_NODE_URL
