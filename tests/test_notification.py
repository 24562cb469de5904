"""Signed notifications, the pure part (``stigmem_node.notification``): what ``mint`` makes
verifies, and ``verify`` refuses, in its documented order, every notification it must: no
signature, a malformed body, an unknown or inactive sender, a wrong key, one altered byte,
another addressee, a date outside the window.  Real Ed25519 keys throughout."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from stigmem_node import notification as nt
from stigmem_node.encoding import b64url_decode, b64url_encode
from stigmem_node.keys import KeySigner
from stigmem_node.notification import NotificationRejected
from stigmem_node.tokens import PeerAuth

A = "stigmem:node:aaaaaaaa-0000-4000-8000-000000000001"
B = "stigmem:node:bbbbbbbb-0000-4000-8000-000000000002"
NOW = 1_795_400_000_000


_PUBLIC = {}  # key id -> public key of every signer made here


def _signer() -> KeySigner:
    private = Ed25519PrivateKey.generate()
    signer = KeySigner(private)
    _PUBLIC[signer.key_id] = private.public_key()
    return signer


SENDER = _signer()
OLD = _signer()  # a retiring key of the sender's, still verifying


def _peer(*signers: KeySigner, status: str = "active") -> PeerAuth:
    return PeerAuth("peer-a", A, status, tuple((s.key_id, _PUBLIC[s.key_id]) for s in signers))


def _verify(note: nt.SignedNotification, *, body: bytes | None = None, signature: str | None = "same",
            key_id: str | None = "same", peer: PeerAuth | None = None, now_ms: int = NOW) -> nt.VerifiedNotification:
    found = peer if peer is not None else _peer(SENDER, OLD)
    return nt.verify(note.body if body is None else body, note.signature if signature == "same" else signature,
                     note.key_id if key_id == "same" else key_id, lookup=lambda iss: found if iss == A else None,
                     our_node_id=B, now_ms=now_ms)


def _code(**kw) -> str:
    with pytest.raises(NotificationRejected) as info:
        _verify(**kw)
    return info.value.code


def test_a_minted_notification_verifies_and_names_its_sender_nonce_and_key() -> None:
    note = nt.mint(SENDER, issuer=A, audience=B, now_ms=NOW)
    verified = _verify(note)
    assert verified.peer.node_id == A and verified.iat_ms == NOW and verified.key_id == SENDER.key_id
    assert verified.nonce == json.loads(note.body)["nonce"] and verified.nonce_expires_ms == NOW + nt.WINDOW_MS
    assert note.headers[nt.SIGNATURE_HEADER] == note.signature
    assert json.loads(note.body)["typ"] == nt.NOTIFICATION_TYPE


def test_every_key_the_receiver_holds_for_the_sender_verifies_so_rotation_is_seamless() -> None:
    note = nt.mint(OLD, issuer=A, audience=B, now_ms=NOW)
    assert _verify(note).key_id == OLD.key_id
    # Without a key id, or with one the receiver does not know, every key is tried.
    assert _verify(note, key_id=None).key_id == OLD.key_id
    assert _verify(note, key_id="sha256:" + "0" * 32).key_id == OLD.key_id
    # A key id naming another of the sender's keys selects that key only.
    assert _code(note=note, key_id=SENDER.key_id) == "invalid_signature"


def test_a_signature_by_any_other_key_is_refused() -> None:
    note = nt.mint(_signer(), issuer=A, audience=B, now_ms=NOW)
    assert _code(note=note, key_id=None) == "invalid_signature"


@pytest.mark.parametrize("index", [0, 5, 30, -2])
def test_a_body_altered_by_one_byte_is_refused(index: int) -> None:
    note = nt.mint(SENDER, issuer=A, audience=B, now_ms=NOW)
    body = bytearray(note.body)
    body[index] = ord(" ") if body[index] != ord(" ") else ord("\t")  # still JSON where whitespace is allowed
    code = _code(note=note, body=bytes(body))
    assert code in ("invalid_signature", "malformed_notification")
    # The same text re-spaced (still the same JSON object) is not the signed bytes either.
    spaced = json.dumps(json.loads(note.body)).encode()
    assert _code(note=note, body=spaced) == "invalid_signature"


def test_a_signature_altered_by_one_bit_is_refused() -> None:
    note = nt.mint(SENDER, issuer=A, audience=B, now_ms=NOW)
    raw = bytearray(b64url_decode(note.signature))
    raw[10] ^= 1
    assert _code(note=note, signature=b64url_encode(bytes(raw))) == "invalid_signature"


def test_the_window_is_300_seconds_each_way() -> None:
    note = nt.mint(SENDER, issuer=A, audience=B, now_ms=NOW)
    assert _verify(note, now_ms=NOW + nt.WINDOW_MS).iat_ms == NOW
    assert _verify(note, now_ms=NOW - nt.WINDOW_MS).iat_ms == NOW
    assert _code(note=note, now_ms=NOW + nt.WINDOW_MS + 1) == "notification_expired"
    assert _code(note=note, now_ms=NOW - nt.WINDOW_MS - 1) == "iat_in_future"


def test_a_notification_for_another_node_is_refused() -> None:
    note = nt.mint(SENDER, issuer=A, audience="stigmem:node:cccccccc-0000-4000-8000-000000000003", now_ms=NOW)
    assert _code(note=note) == "invalid_sub"


def test_an_unknown_or_inactive_sender_is_refused_before_any_signature_work() -> None:
    stranger = nt.mint(SENDER, issuer="stigmem:node:dddddddd-0000-4000-8000-000000000004", audience=B, now_ms=NOW)
    assert _code(note=stranger) == "peer_not_registered"
    note = nt.mint(SENDER, issuer=A, audience=B, now_ms=NOW)
    assert _code(note=note, peer=_peer(SENDER, status="suspended")) == "peer_not_active"


def _body(**claims) -> bytes:
    base = {"typ": nt.NOTIFICATION_TYPE, "iss": A, "sub": B, "iat": NOW, "nonce": "n-1"}
    return json.dumps({k: v for k, v in {**base, **claims}.items() if v is not ...}).encode()


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[1]", b'{"typ":"stigmem-notify/1","typ":"stigmem-notify/1"}', "\u00e9".encode("latin-1"),
    _body(typ="stigmem-notify/2"), _body(typ=...), _body(iss=""), _body(iss=7), _body(sub=...), _body(iss="x" * 513),
    _body(iat=1.5), _body(iat="1"), _body(iat=True), _body(iat=-1), _body(iat=10**15 + 1), _body(nonce=...),
    _body(nonce=""), _body(nonce="n" * 129), _body(nonce="a\x00b"), _body(nonce=5),
    b'{"typ":"stigmem-notify/1","iss":"a","sub":"b","iat":NaN,"nonce":"n"}',
    b" " * (nt.MAX_NOTIFICATION_BYTES + 1),
], ids=lambda b: repr(b[:40]))
def test_a_malformed_body_is_refused_whoever_signed_it(body: bytes) -> None:
    note = nt.SignedNotification(body, b64url_encode(SENDER.sign(body)), SENDER.key_id)
    assert _code(note=note) == "malformed_notification"


@pytest.mark.parametrize("signature", ["!!", b64url_encode(b"x" * 63), b64url_encode(b"x" * 64) + "=", "é"])
def test_a_signature_header_that_is_not_64_bytes_of_base64url_is_malformed(signature: str) -> None:
    note = nt.mint(SENDER, issuer=A, audience=B, now_ms=NOW)
    assert _code(note=note, signature=signature) == "malformed_notification"


def test_a_long_key_id_is_malformed_and_no_signature_is_the_first_refusal() -> None:
    note = nt.mint(SENDER, issuer=A, audience=B, now_ms=NOW)
    assert _code(note=note, key_id="k" * 129) == "malformed_notification"
    assert _code(note=note, signature=None) == "notification_signature_required"
    assert _code(note=note, signature="", body=b"garbage") == "notification_signature_required"


def test_a_refusal_reports_the_claimed_issuer_and_skew_for_the_audit_trail() -> None:
    note = nt.mint(_signer(), issuer=A, audience=B, now_ms=NOW - 1234)
    with pytest.raises(NotificationRejected) as info:
        _verify(note, key_id=None)
    assert (info.value.issuer, info.value.skew_ms) == (A, 1234)
    assert "private" not in repr(info.value)


def test_every_documented_code_is_raised_by_some_check() -> None:
    assert set(nt.REJECTION_CODES) == {
        "notification_signature_required", "malformed_notification", "peer_not_registered", "peer_not_active",
        "invalid_signature", "invalid_sub", "notification_expired", "iat_in_future"}


def test_mint_refuses_arguments_it_cannot_send() -> None:
    for kwargs in ({"issuer": "", "audience": B, "now_ms": NOW}, {"issuer": A, "audience": B, "now_ms": -1},
                   {"issuer": A, "audience": B, "now_ms": 1.5}):
        with pytest.raises(ValueError):
            nt.mint(SENDER, **kwargs)


@settings(max_examples=300, deadline=None)
@given(body=st.one_of(st.binary(max_size=600), st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
           st.sampled_from(["typ", "iss", "sub", "iat", "nonce", "x"]),
           st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
                     st.just(nt.NOTIFICATION_TYPE), st.just(A), st.just(B), st.just(NOW))))),
       signature=st.one_of(st.none(), st.text(max_size=100)), key_id=st.one_of(st.none(), st.text(max_size=150)))
def test_hostile_input_is_refused_with_a_code_never_an_unexpected_error(body: bytes, signature, key_id) -> None:
    note = nt.SignedNotification(body, signature or "", key_id or "")
    with pytest.raises(NotificationRejected) as info:
        _verify(note, signature=signature, key_id=key_id)
    assert info.value.code in nt.REJECTION_CODES
