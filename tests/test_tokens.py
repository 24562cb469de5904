"""Peer tokens: mint, verify (every rejection code, in order), inspect, and fuzzing.

Real Ed25519 keys, no mocks.  Times are epoch milliseconds.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stigmem_node import tokens
from stigmem_node.encoding import b64url_encode, key_id
from stigmem_node.error_codes import http_status
from stigmem_node.token_inspect import inspect
from stigmem_node.tokens import PeerAuth, TokenRejected, VerifiedToken, mint, verify

NOW = 1_795_398_098_885
US = "stigmem:node:us"
ALICE = "stigmem:node:alice"
BOB = "stigmem:node:bob"
LEEWAY = tokens.DEFAULT_LEEWAY_MS


def _raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _kid(private: Ed25519PrivateKey) -> str:
    return key_id(_raw_public(private))


ALICE_KEY = Ed25519PrivateKey.generate()
ALICE_OLD_KEY = Ed25519PrivateKey.generate()
BOB_KEY = Ed25519PrivateKey.generate()

ALICE_AUTH = PeerAuth(
    peer_id="peer-alice",
    node_id=ALICE,
    status="active",
    keys=((_kid(ALICE_KEY), ALICE_KEY.public_key()), (_kid(ALICE_OLD_KEY), ALICE_OLD_KEY.public_key())),
)
BOB_AUTH = PeerAuth(peer_id="peer-bob", node_id=BOB, status="active", keys=((_kid(BOB_KEY), BOB_KEY.public_key()),))
PEERS = {ALICE: ALICE_AUTH, BOB: BOB_AUTH}


def lookup(iss: str) -> PeerAuth | None:
    return PEERS.get(iss)


def good_token(**overrides: Any) -> str:
    args: dict[str, Any] = {
        "issuer": ALICE,
        "audience": US,
        "private_key": ALICE_KEY,
        "key_id": _kid(ALICE_KEY),
        "scopes": ["public", "company"],
        "now_ms": NOW,
    }
    args.update(overrides)
    return mint(**args)


def check(token: str, **overrides: Any) -> VerifiedToken:
    args: dict[str, Any] = {"lookup": lookup, "our_node_id": US, "now_ms": NOW}
    args.update(overrides)
    return verify(token, **args)


def rejected(token: str, **overrides: Any) -> TokenRejected:
    with pytest.raises(TokenRejected) as info:
        check(token, **overrides)
    return info.value


def b64json(obj: Any) -> str:
    return b64url_encode(json.dumps(obj, separators=(",", ":")).encode())


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ALICE,
        "sub": US,
        "iat": NOW,
        "exp": NOW + 60_000,
        "nonce": "7a4d0c8e-6c61-4f57-9d0f-0d6f2b6f1a11",
        "scopes": ["public"],
    }
    for name, value in overrides.items():
        if value is _DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


_DROP = object()


def signed(payload: Any, header: Any = None, key: Ed25519PrivateKey = ALICE_KEY, *, raw_payload: str | None = None) -> str:
    """A compact JWS over arbitrary header/payload JSON, signed with a real Ed25519 key."""
    if header is None:
        header = {"alg": "EdDSA", "typ": "JWT", "kid": _kid(key)}
    head = header if isinstance(header, str) else b64json(header)
    body = raw_payload if raw_payload is not None else b64json(payload)
    signature = key.sign(f"{head}.{body}".encode("ascii"))
    return f"{head}.{body}.{b64url_encode(signature)}"


# --------------------------------------------------------------------------- minting and round trip


def test_round_trip() -> None:
    token = good_token(htm="get", htu="/v1/federation/facts?limit=100")
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "EdDSA", "typ": "JWT", "kid": _kid(ALICE_KEY)}

    result = check(token, method="GET", path_qs="/v1/federation/facts?limit=100")
    assert result.peer is ALICE_AUTH
    assert result.key_id == _kid(ALICE_KEY)
    assert result.scopes == ("public", "company")
    assert result.exp_ms == NOW + 60_000
    assert result.claims["iat"] == NOW
    assert result.claims["sub"] == US
    assert result.claims["htm"] == "GET"
    assert result.nonce == result.claims["nonce"]
    assert len(result.nonce) == 36
    # PyJWT agrees that the signature is good.
    jwt.PyJWS().decode_complete(token, ALICE_KEY.public_key(), algorithms=["EdDSA"])


def test_mint_without_kid_and_fresh_nonces() -> None:
    first = good_token(key_id=None)
    header = jwt.get_unverified_header(first)
    assert header == {"alg": "EdDSA", "typ": "JWT"}
    assert check(first).key_id == _kid(ALICE_KEY)
    assert check(good_token()).nonce != check(first).nonce


def test_mint_caps_ttl() -> None:
    for ttl in (0, -1, tokens.MAX_LIFETIME_MS + 1, True, 1.5):
        with pytest.raises(ValueError):
            good_token(ttl_ms=ttl)
    assert check(good_token(ttl_ms=1)).exp_ms == NOW + 1
    assert check(good_token(ttl_ms=tokens.MAX_LIFETIME_MS)).exp_ms == NOW + tokens.MAX_LIFETIME_MS


def test_accepts_reference_shaped_token() -> None:
    """What the reference node sends: no kid, 5 minutes, only iss/sub/iat/exp/nonce/scopes."""
    payload = {
        "iss": BOB,
        "sub": US,
        "iat": NOW,
        "exp": NOW + 300_000,
        "nonce": "715b0cbc-b02c-4c68-8512-ae0f92bcd32f",
        "scopes": ["company", "public"],
    }
    token = jwt.encode(payload, BOB_KEY, algorithm="EdDSA")
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "typ": "JWT"}
    result = check(token, method="GET", path_qs="/v1/federation/facts?limit=100")
    assert result.peer is BOB_AUTH
    assert result.key_id == _kid(BOB_KEY)
    assert result.nonce == "715b0cbc-b02c-4c68-8512-ae0f92bcd32f"
    assert result.scopes == ("company", "public")


def test_accepts_previous_key_during_rotation() -> None:
    token = good_token(private_key=ALICE_OLD_KEY, key_id=_kid(ALICE_OLD_KEY))
    assert check(token).key_id == _kid(ALICE_OLD_KEY)


def test_unknown_kid_falls_back_to_every_key() -> None:
    token = good_token(private_key=ALICE_OLD_KEY, key_id="sha256:00000000000000000000000000000000")
    assert check(token).key_id == _kid(ALICE_OLD_KEY)


# --------------------------------------------------------------------------- one test per code


def test_rejects_missing_token() -> None:
    error = rejected("")
    assert (error.code, http_status(error.code), error.issuer, error.skew_ms) == \
        ("peer_token_required", 401, None, None)


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b",
        "a.b.c.d",
        "...",
        "!!.!!.!!",
        "eyJhbGciOiJFZERTQSJ9.e30.",  # payload {} lacks every claim
        "eyJhbGciOiJFZERTQSJ9" + "." * 2,
        "x" * (tokens.MAX_TOKEN_CHARS + 1),
        "é.é.é",
    ],
)
def test_rejects_malformed_token(token: str) -> None:
    assert rejected(token).code == "malformed_token"


def test_rejects_oversize_token() -> None:
    token = signed(claims(padding="x" * tokens.MAX_TOKEN_CHARS))
    assert rejected(token).code == "malformed_token"


@pytest.mark.parametrize(
    "payload",
    [
        claims(iss=_DROP),
        claims(iss=""),
        claims(iss=7),
        claims(sub=_DROP),
        claims(sub=""),
        claims(sub=["x"]),
        claims(exp=_DROP),
        claims(iat=_DROP),
        claims(scopes="public"),
        claims(scopes=["public", 3]),
        claims(scopes=[""]),
        claims(scopes={"public": True}),
        claims(nonce=12345),
        claims(nonce="n" * (tokens.MAX_NONCE_CHARS + 1)),
        claims(nonce="\x00"),  # no storage engine has to keep a NUL (PostgreSQL text cannot)
        claims(nonce="abc\x00def"),
        claims(htm=""),
        claims(htu=5),
        claims(exp=NOW - 1),  # exp < iat: a negative lifetime is malformed
    ],
    ids=lambda p: json.dumps(p)[:60],
)
def test_rejects_malformed_claims(payload: dict[str, Any]) -> None:
    assert rejected(signed(payload)).code == "malformed_token"


@pytest.mark.parametrize("name", ["iat", "exp", "nbf"])
@pytest.mark.parametrize(
    "value", [10**15 + 1, 10**30, -1, 1.5, float(NOW), str(NOW), True, False, None, [NOW], {"ms": NOW}]
)
def test_rejects_bad_time_claims(name: str, value: Any) -> None:
    assert rejected(signed(claims(**{name: value}))).code == "malformed_token"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "99999999999999999999999999"])
def test_rejects_non_finite_and_huge_number_literals(literal: str) -> None:
    text = json.dumps(claims()).replace(f'"exp": {NOW + 60_000}', f'"exp": {literal}')
    assert literal in text
    assert rejected(signed(None, raw_payload=b64url_encode(text.encode()))).code == "malformed_token"


@pytest.mark.parametrize(
    "header, payload",
    [
        ([], claims()),  # header is a JSON array
        ({"alg": "EdDSA"}, [claims()]),  # payload is a JSON array
        ({"alg": "EdDSA"}, "just a string"),
        ({"alg": "EdDSA"}, None),
        ({"typ": "JWT"}, claims()),  # header without alg
        ({"alg": "EdDSA", "kid": 5}, claims()),  # kid not a string
    ],
)
def test_rejects_json_that_is_not_the_right_object(header: Any, payload: Any) -> None:
    assert rejected(signed(payload, header)).code == "malformed_token"


def test_rejects_duplicate_member_names() -> None:
    text = json.dumps(claims())[:-1] + f', "sub": "{US}"}}'
    assert rejected(signed(None, raw_payload=b64url_encode(text.encode()))).code == "malformed_token"


def test_rejects_deeply_nested_json_without_crashing() -> None:
    deep = "[" * 2500 + "]" * 2500  # beyond the interpreter recursion limit
    text = json.dumps(claims())[:-1] + f', "x": {deep}}}'
    token = signed(None, raw_payload=b64url_encode(text.encode()))
    assert len(token) <= tokens.MAX_TOKEN_CHARS
    assert rejected(token).code == "malformed_token"


def test_rejects_non_canonical_base64() -> None:
    token = good_token()
    head, body, sig = token.split(".")
    assert rejected(f"{head}=.{body}.{sig}").code == "malformed_token"  # padding
    assert rejected(f"{head}.{body}.{sig}==").code == "malformed_token"
    # The last character of a 64-byte signature carries 4 unused bits: changing them must not
    # yield a second accepted spelling of the same signature.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1])
    twin = sig[:-1] + alphabet[last ^ 1]
    assert base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(sig + "==")
    assert rejected(f"{head}.{body}.{twin}").code == "malformed_token"


def test_rejects_standard_base64_alphabet() -> None:
    token = good_token()
    while "-" not in token and "_" not in token:  # most tokens have one; make sure
        token = good_token()
    assert rejected(token.replace("-", "+").replace("_", "/")).code == "malformed_token"


def test_rejects_lone_surrogates_in_claims() -> None:
    text = json.dumps(claims()).replace(f'"{ALICE}"', '"\\ud800"')
    assert rejected(signed(None, raw_payload=b64url_encode(text.encode()))).code == "malformed_token"


def test_rejects_alg_none() -> None:
    head = b64json({"alg": "none", "typ": "JWT"})
    body = b64json(claims())
    for token in (f"{head}.{body}.", f"{head}.{body}.{b64url_encode(b'x' * 64)}"):
        assert rejected(token).code == "invalid_token"


def test_rejects_hs256_signed_with_the_public_key() -> None:
    secret = _raw_public(ALICE_KEY)
    for secret_form in (secret, b64url_encode(secret).encode()):
        head = b64json({"alg": "HS256", "typ": "JWT"})
        body = b64json(claims())
        mac = hmac.new(secret_form, f"{head}.{body}".encode(), hashlib.sha256).digest()
        assert rejected(f"{head}.{body}.{b64url_encode(mac)}").code == "invalid_token"


@pytest.mark.parametrize("alg", ["ES256", "Ed25519", "eddsa", "EdDSA ", "RS256", "", ["EdDSA"], None])
def test_rejects_other_algs(alg: Any) -> None:
    assert rejected(signed(claims(), {"alg": alg, "typ": "JWT"})).code == "invalid_token"


def test_rejects_es256_token() -> None:
    token = jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    assert rejected(token).code == "invalid_token"


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "EdDSA", "typ": "at+jwt"},
        {"alg": "EdDSA", "typ": None},
        {"alg": "EdDSA", "crit": ["exp"]},
        {"alg": "EdDSA", "b64": False, "crit": ["b64"]},
    ],
)
def test_rejects_unsupported_header_parameters(header: dict[str, Any]) -> None:
    assert rejected(signed(claims(), header)).code == "invalid_token"


def test_rejects_unregistered_peer() -> None:
    error = rejected(good_token(issuer="stigmem:node:stranger"))
    assert (error.code, http_status(error.code), error.issuer) == ("peer_not_registered", 401, "stigmem:node:stranger")


def test_rejects_lookup_returning_another_node() -> None:
    assert rejected(good_token(), lookup=lambda iss: BOB_AUTH).code == "peer_not_registered"


@pytest.mark.parametrize("status", ["pending_approval", "suspended", "revoked", "rejected"])
def test_rejects_inactive_peer(status: str) -> None:
    inactive = PeerAuth(ALICE_AUTH.peer_id, ALICE, status, ALICE_AUTH.keys)
    error = rejected(good_token(), lookup=lambda iss: inactive)
    assert (error.code, http_status(error.code)) == ("peer_not_active", 403)


def test_rejects_token_signed_by_another_registered_peer() -> None:
    """Bob signs a token claiming to be Alice, with and without Bob's kid."""
    for kid in (_kid(BOB_KEY), None, _kid(ALICE_KEY)):
        error = rejected(good_token(private_key=BOB_KEY, key_id=kid))
        assert (error.code, error.issuer) == ("invalid_signature", ALICE)


def test_rejects_kid_matching_no_key_when_no_key_verifies() -> None:
    token = good_token(private_key=Ed25519PrivateKey.generate(), key_id="sha256:ffffffffffffffffffffffffffffffff")
    assert rejected(token).code == "invalid_signature"


def test_kid_naming_a_key_selects_that_key_only() -> None:
    # Signed by the old key but naming the current one: not retried under the old key.
    token = good_token(private_key=ALICE_OLD_KEY, key_id=_kid(ALICE_KEY))
    assert rejected(token).code == "invalid_signature"


def test_rejects_tampered_payload() -> None:
    head, _, sig = good_token().split(".")
    body = b64json(claims(scopes=["public", "company", "local"]))
    assert rejected(f"{head}.{body}.{sig}").code == "invalid_signature"


def test_rejects_a_second_spelling_of_the_signature() -> None:
    """S + L verifies the same equation; a strict verifier (libsodium, RFC 8032) refuses it, so a
    token cannot be replayed under a new spelling of its signature."""
    head, body, sig = good_token().split(".")
    signature = base64.urlsafe_b64decode(sig + "==")
    s = int.from_bytes(signature[32:], "little") + 2**252 + 27742317777372353535851937790883648493
    assert s < 2**256  # true for this fixed key and claims
    malleable = b64url_encode(signature[:32] + s.to_bytes(32, "little"))
    assert rejected(f"{head}.{body}.{malleable}").code == "invalid_signature"


def test_rejects_peer_without_keys() -> None:
    keyless = PeerAuth(ALICE_AUTH.peer_id, ALICE, "active", ())
    assert rejected(good_token(), lookup=lambda iss: keyless).code == "invalid_signature"


@pytest.mark.parametrize("signature", [b"", b"\x00" * 63, b"\x00" * 65])
def test_rejects_signature_of_wrong_length(signature: bytes) -> None:
    head, body, _ = good_token().split(".")
    assert rejected(f"{head}.{body}.{b64url_encode(signature)}").code == "invalid_signature"


def test_rejects_wrong_sub() -> None:
    assert rejected(good_token(audience=BOB)).code == "invalid_sub"


def test_rejects_expired_token() -> None:
    error = rejected(good_token(), now_ms=NOW + 60_000 + LEEWAY + 1)
    assert error.code == "token_expired"
    assert error.skew_ms == 60_000 + LEEWAY + 1


def test_expiry_leeway_edges() -> None:
    token = good_token()
    exp = NOW + 60_000
    check(token, now_ms=exp + LEEWAY)
    assert rejected(token, now_ms=exp + LEEWAY + 1).code == "token_expired"
    check(token, now_ms=exp + 1, leeway_ms=1)
    assert rejected(token, now_ms=exp + 1, leeway_ms=0).code == "token_expired"


def test_rejects_iat_in_future() -> None:
    token = good_token()
    check(token, now_ms=NOW - LEEWAY)
    error = rejected(token, now_ms=NOW - LEEWAY - 1)
    assert (error.code, error.skew_ms) == ("iat_in_future", -LEEWAY - 1)


def test_rejects_token_lifetime_exceeded() -> None:
    at_limit = signed(claims(exp=NOW + tokens.MAX_LIFETIME_MS))
    check(at_limit)
    assert rejected(signed(claims(exp=NOW + tokens.MAX_LIFETIME_MS + 1))).code == "token_lifetime_exceeded"
    assert rejected(at_limit, max_lifetime_ms=60_000).code == "token_lifetime_exceeded"


def test_rejects_nbf_in_future() -> None:
    check(signed(claims(nbf=NOW + LEEWAY)))
    assert rejected(signed(claims(nbf=NOW + LEEWAY + 1))).code == "nbf_in_future"


@pytest.mark.parametrize("nonce", [_DROP, None, ""])
def test_rejects_missing_nonce(nonce: Any) -> None:
    assert rejected(signed(claims(nonce=nonce))).code == "missing_nonce"


def test_rejects_token_binding_mismatch() -> None:
    token = good_token(htm="GET", htu="/v1/federation/facts?limit=100")
    assert rejected(token, method="POST", path_qs="/v1/federation/facts?limit=100").code == "token_binding_mismatch"
    assert rejected(token, method="GET", path_qs="/v1/federation/facts?limit=500").code == "token_binding_mismatch"
    assert rejected(token, path_qs="/v1/federation/facts").code == "token_binding_mismatch"
    # Not compared when the caller gives no request to compare with.
    check(token)
    check(token, method="GET")


def test_unbound_token_is_accepted_for_any_request() -> None:
    check(good_token(), method="DELETE", path_qs="/anything")


# --------------------------------------------------------------------------- order and error contents


def test_checks_run_in_the_documented_order() -> None:
    late = NOW + 10 * tokens.MAX_LIFETIME_MS
    # malformed beats a bad alg
    assert rejected(signed(claims(iat="x"), {"alg": "none"})).code == "malformed_token"
    # bad alg beats an unknown issuer
    assert rejected(signed(claims(iss="stigmem:node:nobody"), {"alg": "HS256"})).code == "invalid_token"
    # unknown issuer beats a bad signature
    assert rejected(good_token(issuer="stigmem:node:nobody", private_key=BOB_KEY)).code == "peer_not_registered"
    # inactive beats a bad signature
    suspended = PeerAuth("p", ALICE, "suspended", ALICE_AUTH.keys)
    assert rejected(good_token(private_key=BOB_KEY), lookup=lambda iss: suspended).code == "peer_not_active"
    # a bad signature beats every claim check
    assert rejected(good_token(private_key=BOB_KEY, audience=BOB), now_ms=late).code == "invalid_signature"
    # sub beats expiry
    assert rejected(good_token(audience=BOB), now_ms=late).code == "invalid_sub"
    # expiry beats a missing nonce and a binding mismatch
    assert rejected(signed(claims(nonce=_DROP, htm="POST")), now_ms=late, method="GET").code == "token_expired"
    # a missing nonce beats a binding mismatch
    assert rejected(signed(claims(nonce=_DROP, htm="POST")), method="GET").code == "missing_nonce"


def test_rejection_reports_issuer_and_skew_without_key_material() -> None:
    long_iss = "stigmem:node:" + "z" * 1000
    error = rejected(good_token(issuer=long_iss))
    assert error.issuer == long_iss[: tokens.ISSUER_REPORT_CHARS]
    assert error.skew_ms == 0
    error = rejected(good_token(private_key=BOB_KEY), now_ms=NOW + 5)
    assert error.skew_ms == 5
    secrets = {b64url_encode(_raw_public(key)) for key in (ALICE_KEY, ALICE_OLD_KEY, BOB_KEY)}
    for text in (error.message, str(error), repr(error)):
        assert not any(secret in text for secret in secrets)
    assert rejected("a.b.c").issuer is None
    assert rejected(signed(claims(iat="soon"))).issuer == ALICE
    assert rejected(signed(claims(iat="soon"))).skew_ms is None


def test_every_code_is_listed() -> None:
    assert len(set(tokens.REJECTION_CODES)) == 13
    assert "nonce_already_seen" not in tokens.REJECTION_CODES  # the caller's job


def test_tokens_module_is_pure() -> None:
    tree = ast.parse(Path(tokens.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"starlette", "sqlite3", "httpx"}


# --------------------------------------------------------------------------- inspect


def test_inspect_valid_token() -> None:
    report = inspect(good_token(), now_ms=NOW, our_node_id=US)
    assert report["header"]["alg"] == "EdDSA"
    assert report["claims"]["iss"] == ALICE
    assert report["problems"] == []


def test_inspect_strips_bearer_prefix() -> None:
    assert inspect("Bearer " + good_token(), now_ms=NOW)["problems"] == []


def test_inspect_lists_every_claim_problem() -> None:
    token = signed(claims(exp=NOW + tokens.MAX_LIFETIME_MS + 1, nonce=_DROP), {"alg": "HS256"})
    report = inspect(token, now_ms=NOW + 2 * tokens.MAX_LIFETIME_MS, our_node_id=BOB)
    codes = [p["code"] for p in report["problems"]]
    assert codes == ["invalid_token", "invalid_sub", "token_expired", "token_lifetime_exceeded", "missing_nonce"]


@pytest.mark.parametrize("garbage", ["", "   ", "Bearer", "a.b.c", "....", "\x00\udcff.x.y", "x" * 20000, None, 42])
def test_inspect_never_raises_on_garbage(garbage: Any) -> None:
    report = inspect(garbage, now_ms=NOW)
    assert report["problems"]
    assert set(report) == {"header", "claims", "problems"}


def test_inspect_shows_what_decodes_of_a_malformed_token() -> None:
    token = signed(claims(iat=1.5))
    report = inspect(token, now_ms=NOW)
    assert report["claims"]["iat"] == 1.5
    assert [p["code"] for p in report["problems"]] == ["malformed_token"]


# --------------------------------------------------------------------------- property-based fuzzing

VALID = good_token(htm="GET", htu="/v1/federation/facts")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=.+/ \x00é"


def _reheader(token: str, header: dict[str, Any]) -> str:
    _, body, sig = token.split(".")
    return f"{b64json(header)}.{body}.{sig}"


@st.composite
def mutated_tokens(draw: st.DrawFn) -> str:
    token = VALID
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "segments", "header", "append"]))
        if kind == "flip" and token:
            i = draw(st.integers(0, len(token) - 1))
            token = token[:i] + draw(st.sampled_from(_ALPHABET)) + token[i + 1 :]
        elif kind == "insert":
            i = draw(st.integers(0, len(token)))
            token = token[:i] + draw(st.text(_ALPHABET, min_size=1, max_size=4)) + token[i:]
        elif kind == "delete" and token:
            i = draw(st.integers(0, len(token) - 1))
            token = token[:i] + token[i + 1 :]
        elif kind == "truncate":
            token = token[: draw(st.integers(0, len(token)))]
        elif kind == "segments":
            parts = token.split(".")
            op = draw(st.sampled_from(["drop", "dup", "swap"]))
            i = draw(st.integers(0, len(parts) - 1))
            if op == "drop":
                parts.pop(i)
            elif op == "dup":
                parts.insert(i, parts[i])
            elif len(parts) > 1:
                j = draw(st.integers(0, len(parts) - 1))
                parts[i], parts[j] = parts[j], parts[i]
            token = ".".join(parts)
        elif kind == "header" and token.count(".") == 2:
            alg = draw(st.sampled_from(["none", "None", "HS256", "RS256", "ES256", "Ed25519", "EdDSA", "", None]))
            header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
            if draw(st.booleans()):
                header["kid"] = draw(st.sampled_from([_kid(ALICE_KEY), _kid(BOB_KEY), "", "x"]))
            token = _reheader(token, header)
        elif kind == "append":
            token = token + draw(st.sampled_from(["=", "==", ".", "A", "\n", " "]))
    return token


def _only_token_rejected(token: str) -> None:
    try:
        check(token, method="GET", path_qs="/v1/federation/facts")
    except TokenRejected as error:
        assert error.code in tokens.REJECTION_CODES
        assert http_status(error.code) in (401, 403)
        assert error.issuer is None or len(error.issuer) <= tokens.ISSUER_REPORT_CHARS
        assert error.issuer is None or error.issuer.encode("utf-8")
        return
    assert token == VALID  # anything accepted is the token that was signed, byte for byte
    jwt.PyJWS().decode_complete(token, ALICE_KEY.public_key(), algorithms=["EdDSA"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_tokens())
def test_fuzz_mutated_tokens_only_raise_token_rejected(token: str) -> None:
    _only_token_rejected(token)
    inspect(token, now_ms=NOW)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.text(_ALPHABET, max_size=400)))
def test_fuzz_random_text_only_raises_token_rejected(token: str) -> None:
    _only_token_rejected(token)
    inspect(token, now_ms=NOW)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["iss", "sub", "iat", "exp", "nbf", "nonce", "scopes", "htm", "htu", "kid"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
            max_leaves=6,
        ),
    )
)
def test_fuzz_signed_arbitrary_claims_only_raise_token_rejected(overrides: dict[str, Any]) -> None:
    """Correctly signed by Alice, but with arbitrary claim values: still only TokenRejected."""
    payload = claims(**overrides)
    text = json.dumps(payload, allow_nan=True)
    token = signed(None, raw_payload=b64url_encode(text.encode("utf-8", "surrogatepass")))
    try:
        result = check(token)
    except TokenRejected as error:
        assert error.code in tokens.REJECTION_CODES
        return
    assert result.peer is ALICE_AUTH
    assert isinstance(result.nonce, str) and result.nonce
    assert all(isinstance(s, str) for s in result.scopes)
    inspect(token, now_ms=NOW)


def test_minted_nonces_are_uuid7_ordered_by_iat() -> None:
    """The nonces this node mints carry the token's iat in their first 48 bits (UUIDv7), so
    consecutive tokens' nonces sort in issue order and are kept on neighbouring pages."""
    nonces = [check(good_token(now_ms=NOW + i)).nonce for i in range(50)]
    assert nonces == sorted(nonces) and len(set(nonces)) == 50
    for i, nonce in enumerate(nonces):
        value = uuid.UUID(nonce)
        assert (value.version, value.variant) == (7, uuid.RFC_4122)
        assert value.int >> 80 == NOW + i
    many = {tokens.mint(issuer=ALICE, audience=US, private_key=ALICE_KEY, key_id=None, scopes=["public"], now_ms=NOW)
            for _ in range(200)}  # one millisecond: told apart by their 74 random bits
    assert len({check(t).nonce for t in many}) == 200
