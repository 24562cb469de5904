"""Peer tokens: mint and verify the single-use EdDSA JWTs that peers present to each other.

Pure: no HTTP, no SQL.  The clock (``now_ms``) and the key lookup are passed in by the caller.

Wire shape (compatible with the reference node, which sends no ``kid``)::

    header  {"alg":"EdDSA","typ":"JWT","kid":"<key id of the signing key>"}
    claims  {"iss":"<caller node_id>","sub":"<target node_id>","iat":<ms>,"exp":<ms>,
             "nonce":"<uuidv7>","scopes":[...],"htm":"GET","htu":"/v1/federation/facts?limit=100"}

``iat``, ``exp`` and the optional ``nbf`` are epoch **milliseconds** and must be JSON integers
in ``0..10**15``.  ``htm``/``htu`` (our additions) bind a token to one request; the reference
ignores them.

``verify`` checks in this order; the first failure raises ``TokenRejected(code)``:

==  =============================================================  ==========================
 1  token missing or empty                                         peer_token_required
 2  structure: > 8 KiB; not three dot-separated segments; a        malformed_token
    segment not canonical unpadded base64url; header or payload
    not UTF-8 JSON *object* (duplicate member names, NaN and
    Infinity refused); header without ``alg``; ``kid`` not a
    string; ``iss``/``sub`` not non-empty strings; ``iat``/``exp``
    missing, or ``iat``/``exp``/``nbf`` not an integer in
    0..10**15 (floats, strings, booleans, null refused);
    ``exp < iat``; ``scopes`` present but not a list of strings;
    ``nonce`` present but not a string of ≤ 128 chars without NUL;
    ``htm``/``htu`` present but not non-empty strings
 3  ``alg`` is not exactly ``EdDSA``; ``typ`` present and not      invalid_token
    ``JWT``; ``crit`` or ``b64`` present (no extension is
    understood)
 4  ``lookup(iss)`` finds no peer                                  peer_not_registered
 5  the peer's status is not ``active``                            peer_not_active (403)
 6  the signature verifies under none of the peer's keys           invalid_signature
    (a ``kid`` naming one of them selects that key only; an
    unknown or absent ``kid`` tries them all)
 7  ``sub`` is not our node_id                                     invalid_sub
 8  ``now > exp + leeway``                                         token_expired
 9  ``iat > now + leeway``                                         iat_in_future
10  ``exp - iat > max_lifetime``                                   token_lifetime_exceeded
11  ``nbf`` present and ``nbf > now + leeway``                     nbf_in_future
12  ``nonce`` absent, null or empty                                missing_nonce
13  ``htm``/``htu`` present and not this request's method/path     token_binding_mismatch
==  =============================================================  ==========================

Decisions:

* Everything in step 2 is a property of the bytes alone, so it is decided before any lookup
  or signature work.  That includes ``exp < iat`` (a token whose lifetime is negative is
  malformed, not "too long") and the *type* of ``nonce``/``htm``/``htu``; only the *absence*
  of a nonce is reported later, at the place the design gives ``missing_nonce``.
* Base64url must be canonical and unpadded (RFC 7515), so no two distinct strings carry the
  same signed bytes: an accepted token is the exact string the peer signed.
* The nonce is *not* consumed here.  The caller inserts it atomically, after ``verify``
  returns, and keeps it until ``nonce_kept_until(exp)``: ``exp`` plus the largest leeway
  any process may run with plus a margin, so that no process sharing the database, whatever
  its own leeway and across restarts, can accept a token whose nonce was already pruned.
* Exceptions from the caller's ``lookup`` propagate unchanged (a storage failure is not the
  token's fault); anything wrong with the token itself raises ``TokenRejected``.
* ``token_inspect`` explains a token without verifying it (``stigmem-node token inspect``).
* The signing input is split out once here and verified by libsodium (``keys.verifies``:
  strict RFC 8032), once per key tried, without parsing the token again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stigmem_node.encoding import STRICT_JSON, b64url_decode, b64url_encode, is_utf8_text
from stigmem_node.errors import StigmemError
from stigmem_node.keys import verifies
from stigmem_node.uuid7 import uuid7

ALGORITHM = "EdDSA"
DEFAULT_TTL_MS = 60_000
DEFAULT_LEEWAY_MS = 30_000
#: The largest clock leeway a node may be configured with (STIGMEM_PEER_TOKEN_LEEWAY_S).
MAX_LEEWAY_MS = 600_000
#: Extra time a nonce is kept beyond ``exp + MAX_LEEWAY_MS``: covers clock differences
#: between the process that prunes the nonce cache and the processes that accept tokens.
NONCE_PRUNE_MARGIN_MS = 60_000
MAX_LIFETIME_MS = 3_600_000
MAX_TOKEN_CHARS = 8 * 1024
MAX_NONCE_CHARS = 128
MAX_TIME_MS = 10**15
ISSUER_REPORT_CHARS = 256

#: Every code ``verify`` can raise, in check order.
REJECTION_CODES: tuple[str, ...] = (
    "peer_token_required", "malformed_token", "invalid_token", "peer_not_registered", "peer_not_active",
    "invalid_signature", "invalid_sub", "token_expired", "iat_in_future", "token_lifetime_exceeded",
    "nbf_in_future", "missing_nonce", "token_binding_mismatch",
)


def _valid_nonce(nonce: object) -> bool:  # NUL: PostgreSQL text cannot keep it
    return is_utf8_text(nonce) and len(nonce) <= MAX_NONCE_CHARS and "\x00" not in nonce


def nonce_kept_until(exp_ms: int) -> int:
    """Until when (epoch ms) the nonce of a token expiring at ``exp_ms`` must be kept.

    Independent of the accepting process's own leeway: any process on the same database may
    run with a larger one (up to ``MAX_LEEWAY_MS``), and would accept the token until
    ``exp + its leeway``.
    """
    return exp_ms + MAX_LEEWAY_MS + NONCE_PRUNE_MARGIN_MS


# What a decoding step may raise on hostile input.  Nothing broader is caught.
_DECODE_ERRORS = (ValueError, TypeError, UnicodeDecodeError, RecursionError)


class TokenRejected(StigmemError):
    """A peer token failed verification.

    ``code`` is one of ``REJECTION_CODES`` (its HTTP status is in ``stigmem_node.error_codes``);
    ``message`` is one sentence and never contains key material.  ``issuer`` is the
    claimed ``iss`` (unverified, at most 256 characters) when it could be read, ``skew_ms`` is
    ``now_ms - iat`` when ``iat`` could be read; both are for the audit trail.
    """

    def __init__(self, code: str, message: str, *, issuer: str | None = None, skew_ms: int | None = None) -> None:
        super().__init__(code, message)
        self.issuer = issuer
        self.skew_ms = skew_ms

    def __repr__(self) -> str:
        return f"TokenRejected(code={self.code!r}, issuer={self.issuer!r}, skew_ms={self.skew_ms!r})"


@dataclass(frozen=True)
class PeerAuth:
    """What ``verify`` needs to know about a peer; built (and cached) by the caller.

    ``keys`` are the peer's non-retired keys as ``(key_id, parsed public key)``.
    """

    peer_id: str
    node_id: str
    status: str
    keys: tuple[tuple[str, Ed25519PublicKey], ...]


#: ``lookup(iss)``: the peer whose node_id is ``iss``, or None.
PeerLookup = Callable[[str], PeerAuth | None]


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token that passed every check except nonce consumption (the caller's job)."""

    peer: PeerAuth
    claims: dict[str, Any]
    nonce: str
    exp_ms: int
    scopes: tuple[str, ...]
    key_id: str  # the key that verified the signature


@dataclass(slots=True)
class ParsedToken:
    """A structurally valid token, before any check that needs keys or the clock.

    Internal and never mutated; not frozen only because frozen dataclasses construct slowly
    and this is built once per request.
    """

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes
    kid: str | None
    iss: str
    sub: str
    iat: int
    exp: int
    nbf: int | None
    nonce: str | None
    scopes: tuple[str, ...]
    htm: str | None
    htu: str | None


# --------------------------------------------------------------------------- minting


def mint(
    *,
    issuer: str,
    audience: str,
    private_key: Ed25519PrivateKey,
    key_id: str | None,
    scopes: list[str],
    now_ms: int,
    ttl_ms: int = DEFAULT_TTL_MS,
    htm: str | None = None,
    htu: str | None = None,
    nonce: str | None = None,
) -> str:
    """Mint a compact EdDSA JWS for one request to the node ``audience``.

    ``sub`` is the *target* node_id; ``iat``/``exp`` are epoch milliseconds; ``nonce`` is a
    fresh time-ordered UUIDv7 (``uuid7``) unless given; ``htm`` is upper-cased.
    Raises ``ValueError`` when ``ttl_ms`` is outside 1..3,600,000 or an argument has the
    wrong shape.
    """
    if type(ttl_ms) is not int or not 1 <= ttl_ms <= MAX_LIFETIME_MS:
        raise ValueError(f"ttl_ms must be an integer in 1..{MAX_LIFETIME_MS}")
    if type(now_ms) is not int or not 0 <= now_ms <= MAX_TIME_MS - ttl_ms:
        raise ValueError("now_ms must be epoch milliseconds")
    if not is_utf8_text(issuer) or not is_utf8_text(audience):
        raise ValueError("issuer and audience must be non-empty strings")
    if not isinstance(scopes, (list, tuple)) or not all(is_utf8_text(s) for s in scopes):
        raise ValueError("scopes must be a list of non-empty strings")
    if key_id is not None and not is_utf8_text(key_id):
        raise ValueError("key_id must be a non-empty string or None")
    if nonce is None:
        nonce = uuid7(now_ms)
    elif not _valid_nonce(nonce):
        raise ValueError(f"nonce must be a non-empty string of at most {MAX_NONCE_CHARS} characters, without NUL")
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": audience,
        "iat": now_ms,
        "exp": now_ms + ttl_ms,
        "nonce": nonce,
        "scopes": list(scopes),
    }
    if htm is not None:
        if not is_utf8_text(htm):
            raise ValueError("htm must be a non-empty string")
        claims["htm"] = htm.upper()
    if htu is not None:
        if not is_utf8_text(htu):
            raise ValueError("htu must be a non-empty string")
        claims["htu"] = htu
    header = {"alg": ALGORITHM, "typ": "JWT", **({"kid": key_id} if key_id is not None else {})}
    signing_input = ".".join(b64url_encode(json.dumps(part, separators=(",", ":")).encode())
                             for part in (header, claims))
    return f"{signing_input}.{b64url_encode(private_key.sign(signing_input.encode('ascii')))}"


# --------------------------------------------------------------------------- verification


def verify(
    token: str,
    *,
    lookup: PeerLookup,
    our_node_id: str,
    now_ms: int,
    leeway_ms: int = DEFAULT_LEEWAY_MS,
    max_lifetime_ms: int = MAX_LIFETIME_MS,
    method: str | None = None,
    path_qs: str | None = None,
) -> VerifiedToken:
    """Verify a peer token (the text after ``Bearer ``) presented to ``our_node_id``.

    Runs the checks in the order of the module docstring and raises ``TokenRejected`` with
    the first failing code.  ``method``/``path_qs`` (the request's method and path plus query
    string) are compared with ``htm``/``htu`` when both sides are present.  Does not consume
    the nonce.
    """
    if not token:
        raise TokenRejected("peer_token_required", "A peer token is required.")
    parsed = parse(token, now_ms)

    def rejected(code: str, message: str) -> TokenRejected:
        return TokenRejected(code, message, issuer=_report_issuer(parsed.iss), skew_ms=now_ms - parsed.iat)

    problem = header_problem(parsed.header)
    if problem is not None:
        raise rejected(*problem)

    peer = lookup(parsed.iss)
    if peer is None or peer.node_id != parsed.iss:
        raise rejected("peer_not_registered", "The issuer is not a registered peer.")
    if peer.status != "active":
        raise rejected("peer_not_active", "The issuing peer is not active.")

    key_id = _verify_signature(parsed, peer)
    if key_id is None:
        raise rejected("invalid_signature", "The token signature does not verify under the peer's keys.")

    problems = claim_problems(
        parsed, our_node_id=our_node_id, now_ms=now_ms, leeway_ms=leeway_ms,
        max_lifetime_ms=max_lifetime_ms, method=method, path_qs=path_qs,
    )
    if problems:
        raise rejected(*problems[0])

    nonce = parsed.nonce
    if nonce is None:  # claim_problems reports a missing nonce first; this narrows the type
        raise rejected("missing_nonce", "The token has no nonce.")
    return VerifiedToken(
        peer=peer,
        claims=parsed.claims,
        nonce=nonce,
        exp_ms=parsed.exp,
        scopes=parsed.scopes,
        key_id=key_id,
    )


def _verify_signature(parsed: ParsedToken, peer: PeerAuth) -> str | None:
    """The id of the peer key that verifies the token, or None.

    A ``kid`` that names one of the peer's keys selects that key only; otherwise (no
    ``kid``, as the reference sends, or an unknown one) every key is tried.
    """
    candidates = peer.keys
    if parsed.kid is not None:
        named = tuple(entry for entry in peer.keys if entry[0] == parsed.kid)
        if named:
            candidates = named
    for kid, public_key in candidates:
        if verifies(public_key, parsed.signature, parsed.signing_input):
            return kid
    return None


def header_problem(header: dict[str, Any]) -> tuple[str, str] | None:
    """Step 3: the header of a structurally valid token names something we do not accept."""
    alg = header["alg"]
    if not isinstance(alg, str) or alg != ALGORITHM:
        return "invalid_token", "The token algorithm is not EdDSA."
    typ = header.get("typ")
    if "typ" in header and not (isinstance(typ, str) and typ.upper() == "JWT"):
        return "invalid_token", "The token type is not JWT."
    if "crit" in header or "b64" in header:
        return "invalid_token", "The token header uses an unsupported extension."
    return None


def claim_problems(
    parsed: ParsedToken,
    *,
    our_node_id: str | None,
    now_ms: int,
    leeway_ms: int,
    max_lifetime_ms: int,
    method: str | None,
    path_qs: str | None,
) -> list[tuple[str, str]]:
    """Steps 7 to 13: every failing claim check as ``(code, message)``, in verification order."""
    problems: list[tuple[str, str]] = []
    if our_node_id is not None and parsed.sub != our_node_id:
        problems.append(("invalid_sub", "The token is addressed to another node."))
    if now_ms > parsed.exp + leeway_ms:
        problems.append(("token_expired", "The token has expired."))
    if parsed.iat > now_ms + leeway_ms:
        problems.append(("iat_in_future", "The token was issued in the future."))
    if parsed.exp - parsed.iat > max_lifetime_ms:
        problems.append(("token_lifetime_exceeded", f"The token lifetime exceeds {max_lifetime_ms} ms."))
    if parsed.nbf is not None and parsed.nbf > now_ms + leeway_ms:
        problems.append(("nbf_in_future", "The token is not valid yet."))
    if parsed.nonce is None:
        problems.append(("missing_nonce", "The token has no nonce."))
    if method is not None and parsed.htm is not None and parsed.htm != method:
        problems.append(("token_binding_mismatch", "The token is bound to another HTTP method."))
    if path_qs is not None and parsed.htu is not None and parsed.htu != path_qs:
        problems.append(("token_binding_mismatch", "The token is bound to another path."))
    return problems


# --------------------------------------------------------------------------- parsing


def parse(token: str, now_ms: int) -> ParsedToken:
    """Step 2: split, decode and type-check the token once.  Raises ``TokenRejected``."""
    if not isinstance(token, str):
        raise _malformed("The token is not text.")
    if len(token) > MAX_TOKEN_CHARS:
        raise _malformed("The token is longer than 8 KiB.")
    segments = token.split(".")
    if len(segments) != 3:
        raise _malformed("The token is not a compact JWS of three segments.")
    header_seg, payload_seg, signature_seg = segments

    header = _header_segment(header_seg)
    claims = _json_object_segment(payload_seg, "payload")
    try:
        signature = b64url_decode(signature_seg)
    except _DECODE_ERRORS:
        raise _malformed("The token signature is not base64url.", claims, now_ms) from None

    if "alg" not in header:
        raise _malformed("The token header has no alg.", claims, now_ms)
    kid = header.get("kid")
    if "kid" in header and not isinstance(kid, str):
        raise _malformed("The token kid is not a string.", claims, now_ms)

    iss = claims.get("iss")
    if not is_utf8_text(iss):
        raise _malformed("The token iss is not a non-empty string.", claims, now_ms)
    iat = _time_claim(claims, "iat", now_ms)
    exp = _time_claim(claims, "exp", now_ms)
    nbf = _time_claim(claims, "nbf", now_ms) if "nbf" in claims else None
    if exp < iat:
        raise _malformed("The token expires before it was issued.", claims, now_ms)
    sub = claims.get("sub")
    if not is_utf8_text(sub):
        raise _malformed("The token sub is not a non-empty string.", claims, now_ms)

    scopes: tuple[str, ...] = ()
    if "scopes" in claims:
        raw_scopes = claims["scopes"]
        if not isinstance(raw_scopes, list) or not all(is_utf8_text(s) for s in raw_scopes):
            raise _malformed("The token scopes are not a list of strings.", claims, now_ms)
        scopes = tuple(raw_scopes)

    raw_nonce = claims.get("nonce")
    nonce: str | None = None
    if raw_nonce is not None and raw_nonce != "":
        if not _valid_nonce(raw_nonce):
            raise _malformed(f"The token nonce is not a string of at most {MAX_NONCE_CHARS} characters "
                             "without NUL.",
                             claims, now_ms)
        nonce = raw_nonce

    htm, htu = claims.get("htm"), claims.get("htu")
    if ("htm" in claims and not is_utf8_text(htm)) or ("htu" in claims and not is_utf8_text(htu)):
        raise _malformed("The token htm or htu is not a non-empty string.", claims, now_ms)

    return ParsedToken(
        header=header,
        claims=claims,
        # The segments passed the base64url check, so they are ASCII.
        signing_input=f"{header_seg}.{payload_seg}".encode("ascii"),
        signature=signature,
        kid=kid,
        iss=iss,
        sub=sub,
        iat=iat,
        exp=exp,
        nbf=nbf,
        nonce=nonce,
        scopes=scopes,
        htm=htm,
        htu=htu,
    )


# Parsed headers by segment text.  A peer sends the same header on every request, so this
# saves a decode per token; bounded, since the segments come from anyone.
_HEADER_CACHE: dict[str, dict[str, Any]] = {}
_HEADER_CACHE_MAX = 256


def _header_segment(segment: str) -> dict[str, Any]:
    header = _HEADER_CACHE.get(segment)
    if header is None:
        header = _json_object_segment(segment, "header")
        if len(_HEADER_CACHE) >= _HEADER_CACHE_MAX:
            _HEADER_CACHE.clear()
        _HEADER_CACHE[segment] = header
    return header


def _json_object_segment(segment: str, what: str) -> dict[str, Any]:
    try:
        text = b64url_decode(segment).decode("utf-8")
        value = STRICT_JSON.decode(text)
    except _DECODE_ERRORS:
        raise _malformed(f"The token {what} is not base64url-encoded JSON.") from None
    if not isinstance(value, dict):
        raise _malformed(f"The token {what} is not a JSON object.")
    return value


def _time_claim(claims: dict[str, Any], name: str, now_ms: int) -> int:
    if name not in claims:
        raise _malformed(f"The token has no {name}.", claims, now_ms)
    value = claims[name]
    if type(value) is not int or not 0 <= value <= MAX_TIME_MS:
        raise _malformed(f"The token {name} is not epoch milliseconds.", claims, now_ms)
    return value


def _report_issuer(iss: object) -> str | None:
    """The claimed issuer as it may be logged: a string, at most 256 chars, valid UTF-8."""
    if not isinstance(iss, str) or not iss:
        return None
    return iss[:ISSUER_REPORT_CHARS].encode("utf-8", "replace").decode("utf-8")


def _malformed(message: str, claims: dict[str, Any] | None = None, now_ms: int | None = None) -> TokenRejected:
    issuer = skew_ms = None
    if claims is not None:
        issuer = _report_issuer(claims.get("iss"))
        iat = claims.get("iat")
        if now_ms is not None and type(iat) is int and 0 <= iat <= MAX_TIME_MS:
            skew_ms = now_ms - iat
    return TokenRejected("malformed_token", message, issuer=issuer, skew_ms=skew_ms)
