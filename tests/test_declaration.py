"""Signed peer declarations: canonical bytes, signature, freshness, garbage."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from stigmem_node import declaration as d
from stigmem_node.encoding import b64url_decode, fingerprint
from stigmem_node.errors import ValidationError
from stigmem_node.keys import KeySigner, public_key_from_b64

NOW = datetime(2026, 11, 23, 2, 7, 58, tzinfo=UTC)
LEEWAY = timedelta(seconds=30)


class Ident:
    """A node identity without a database: a fresh key, a node id and a URL."""

    def __init__(self, url: str) -> None:
        self.signer = KeySigner(Ed25519PrivateKey.generate())
        self.public_key = self.signer.public_key
        self.node_id = f"stigmem:node:{self.signer.key_id[7:]}"
        self.node_url = url


def make_identity(tmp_path, url="http://127.0.0.1:18102") -> Ident:
    return Ident(url)


def sign(ident: Ident, scopes, now) -> d.Declaration:
    return d.sign(ident.signer, scopes, now, node_id=ident.node_id, node_url=ident.node_url)


def reason_of(body, now=NOW) -> str | None:
    """The reason code ``verified`` rejects ``body`` with, or None if it accepts it."""
    try:
        d.verified(body, now, leeway=LEEWAY)
    except d.DeclarationRejected as exc:
        return exc.reason
    return None


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
    decl = sign(ident, ["public", "company", "public"], NOW)
    assert decl.allowed_scopes == ("company", "public")
    assert decl.signed_at == "2026-11-23T02:07:58Z"
    parsed = d.verified(decl.as_dict(), NOW, leeway=LEEWAY)
    assert parsed == decl
    # The signature is Ed25519 over exactly the canonical bytes, base64url without padding.
    assert "=" not in decl.declaration_sig
    public_key_from_b64(decl.federation_pubkey).verify(b64url_decode(decl.declaration_sig),
                                                       d.canonical_bytes(decl.as_dict()))


def test_scopes_are_verified_in_the_order_signed(tmp_path):
    """The reference signs allowed_scopes in the order given; we verify what was signed."""
    key = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    from stigmem_node.encoding import b64url_encode

    pub = b64url_encode(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    fields = {"allowed_scopes": ["public", "company"], "federation_pubkey": pub, "node_id": "n",
              "node_url": "http://127.0.0.1:1", "signed_at": "2026-11-23T02:07:58Z"}
    body = {**fields, "declaration_sig": b64url_encode(key.sign(d.canonical_bytes(fields)))}
    assert reason_of(body) is None
    body["allowed_scopes"] = ["company", "public"]
    assert reason_of(body) == d.INVALID_SIGNATURE


def test_tampered_fields_are_rejected_as_invalid_signature(tmp_path):
    ident = make_identity(tmp_path)
    good = sign(ident, ["company"], NOW).as_dict()
    for field, value in [("node_url", "http://127.0.0.1:9"), ("node_id", "stigmem:node:other"),
                         ("allowed_scopes", ["company", "public"]), ("signed_at", "2026-11-23T02:07:59Z")]:
        assert reason_of({**good, field: value}) == d.INVALID_SIGNATURE, field
    other = make_identity(tmp_path / "x") if (tmp_path / "x").mkdir() is None else None
    assert reason_of({**good, "federation_pubkey": other.public_key}) == d.INVALID_SIGNATURE


def test_stale_and_future_declarations_are_rejected(tmp_path):
    ident = make_identity(tmp_path)
    old = sign(ident, ["company"], NOW - timedelta(days=7, seconds=1)).as_dict()
    assert reason_of(old) == d.STALE
    edge = sign(ident, ["company"], NOW - timedelta(days=7)).as_dict()
    assert reason_of(edge) is None
    future = sign(ident, ["company"], NOW + timedelta(seconds=31)).as_dict()
    assert reason_of(future) == d.FUTURE
    near = sign(ident, ["company"], NOW + timedelta(seconds=30)).as_dict()
    assert reason_of(near) is None


def test_malformed_declarations_give_reasons(tmp_path):
    good = sign(make_identity(tmp_path), ["company"], NOW).as_dict()
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
            assert reason_of(body) == reason, body


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
        assert reason_of(body) is not None


def test_fingerprint_is_sha256_of_the_base64url_text():
    import hashlib

    text = "IU0W2W9qFJ2Mu6CZch9ENBV6n4E1jCDChN_2wieX1zo"
    assert fingerprint(text) == "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    assert json.dumps(fingerprint(text)).startswith('"sha256:')


def test_small_order_public_keys_are_refused():
    """A small-order 'key' verifies a trivial signature over any message; we never accept one."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from stigmem_node.encoding import b64url_encode
    from stigmem_node.keys import _SMALL_ORDER

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
    assert reason_of(body) == d.INVALID_PUBKEY


def test_node_ids_with_spaces_control_characters_or_bare_uuids_are_refused(tmp_path):
    # These were malformed_declaration; node ids and URLs now have their own codes.
    good = sign(make_identity(tmp_path), ["company"], NOW).as_dict()
    for node_id in ("a b", "a\x1b[31m", "a\n", "0f8e3b9a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"):
        assert reason_of({**good, "node_id": node_id}) == d.INVALID_NODE_ID, node_id
    assert reason_of({**good, "node_url": "http://127.0.0.1:1/ x"}) == d.INVALID_NODE_URL


def test_rejections_are_typed_validation_errors_with_the_field():
    good = sign(make_identity(None), ["company"], NOW).as_dict()
    for body, reason, field in [
        ({**good, "node_id": ""}, d.MALFORMED, "node_id"),
        ({**good, "allowed_scopes": ["galaxy"]}, d.INVALID_SCOPE, "allowed_scopes"),
        ({**good, "federation_pubkey": "AAAA"}, d.INVALID_PUBKEY, "federation_pubkey"),
        ({**good, "declaration_sig": "AAAA"}, d.INVALID_SIGNATURE, "declaration_sig"),
    ]:
        try:
            d.verified(body, NOW, leeway=LEEWAY)
        except d.DeclarationRejected as exc:
            assert isinstance(exc, ValidationError)
            assert (exc.reason, exc.code, exc.field) == (reason, reason, field)
            assert exc.message
        else:
            raise AssertionError(body)
    stale = sign(make_identity(None), ["company"], NOW - timedelta(days=8))
    try:
        d.authenticate(stale, NOW, leeway=LEEWAY)
    except d.DeclarationRejected as exc:
        assert exc.reason == d.STALE
    else:
        raise AssertionError("stale declaration accepted")
    assert d.authenticate(d.parse(good), NOW, leeway=LEEWAY) == d.parse(good)


def test_verify_compatibility_form_agrees_with_verified():
    """``verify`` returns (declaration or None, reason or None) for callers that want no exception."""
    good = sign(make_identity(None), ["company"], NOW).as_dict()
    for body in (good, None, {**good, "node_id": ""}, {**good, "declaration_sig": "AAAA"},
                 sign(make_identity(None), ["company"], NOW - timedelta(days=8)).as_dict()):
        decl, reason = d.verify(body, NOW, leeway=LEEWAY)
        assert reason == reason_of(body)
        assert (decl is None) == (reason in (d.MALFORMED, d.INVALID_SCOPE, d.INVALID_NODE_ID, d.INVALID_NODE_URL)
                                  or body is None)
        if decl is not None:
            assert decl == d.parse(body)


def test_signing_needs_no_database_only_a_signer():
    """Declarations and manifests sign with any ``keys.Signer``: here a bare key."""
    from stigmem_node import manifest
    from stigmem_node.encoding import jcs

    signer = KeySigner(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    decl = d.sign(signer, ["public"], NOW, node_id="stigmem:node:a", node_url="http://127.0.0.1:1")
    assert decl.federation_pubkey == signer.public_key and decl.node_id == "stigmem:node:a"
    assert d.verified(decl.as_dict(), NOW, leeway=LEEWAY) == decl
    man = manifest.build(signer, NOW, node_id="stigmem:node:a", node_url="http://127.0.0.1:1")
    assert man["entities"] == ["http://127.0.0.1:1", "stigmem:node:a"] and man["key_id"] == signer.key_id
    body = {k: v for k, v in man.items() if k != "signature"}
    public_key_from_b64(man["public_key"]).verify(b64url_decode(man["signature"]), jcs(body))
