"""Signed notifications: "I have new facts for you", from a publisher to a subscriber.

A subscriber that cannot hold a long-poll open (a proxy cuts idle connections, say) can still
hear of new facts within a second: the publisher posts a small signed body to it, and the
subscriber pulls at once.  A notification carries no facts and grants nothing; what it must
not allow is making a node pull on someone else's behalf, or over and over with one captured
message.  So it is signed, addressed, dated and single-use, like a peer token.

Pure: no HTTP, no SQL.  The clock and the peer lookup are the caller's, as for ``tokens``.

Wire shape (docs/protocol.md, Notifications)::

    POST /v1/federation/notify
    Stigmem-Signature: <base64url Ed25519 signature over the exact body bytes>
    Stigmem-Key-Id: <key id of the signing key>            (optional: selects that key)
    {"typ":"stigmem-notify/1","iss":"<sender node_id>","sub":"<receiver node_id>",
     "iat":<epoch ms>,"nonce":"<uuidv7>"}

The signature covers the body's bytes as sent, so nothing is canonicalised: a receiver
verifies what it read, then parses it.  ``typ`` keeps a notification's signed bytes apart from
everything else a node signs (none of which is a JSON object with that member).

``verify`` checks in this order; the first failure raises ``NotificationRejected(code)``:

==  ==========================================================  ================================
 1  no signature                                                notification_signature_required
 2  body over 4 KiB, not a UTF-8 JSON object (duplicate         malformed_notification
    members, NaN refused), ``typ`` not ``stigmem-notify/1``,
    ``iss``/``sub`` not non-empty strings, ``iat`` not an
    integer in 0..10**15, ``nonce`` not a non-empty string of
    at most 128 characters without NUL; the signature not
    canonical base64url of 64 bytes; the key id not a short
    string
 3  ``lookup(iss)`` finds no peer                               peer_not_registered
 4  the peer's status is not ``active``                         peer_not_active
 5  the signature verifies under none of the peer's keys        invalid_signature
    (a key id naming one of them selects that key only)
 6  ``sub`` is not our node_id                                  invalid_sub
 7  ``iat`` older than now - window (300 s)                     notification_expired
 8  ``iat`` later than now + window                             iat_in_future
==  ==========================================================  ================================

The caller then consumes the nonce (``nonce_already_seen`` for a replay), keeping it until
``tokens.nonce_kept_until(iat + window)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from stigmem_node.encoding import STRICT_JSON, b64url_decode, b64url_encode, is_utf8_text
from stigmem_node.keys import Signer, verifies
from stigmem_node.tokens import MAX_NONCE_CHARS, MAX_TIME_MS, PeerAuth, PeerLookup, TokenRejected
from stigmem_node.uuid7 import uuid7

__all__ = [
    "KEY_ID_HEADER",
    "MAX_NOTIFICATION_BYTES",
    "NOTIFICATION_TYPE",
    "REJECTION_CODES",
    "SIGNATURE_HEADER",
    "WINDOW_MS",
    "NotificationRejected",
    "SignedNotification",
    "VerifiedNotification",
    "mint",
    "verify",
]

NOTIFICATION_TYPE: Final = "stigmem-notify/1"
SIGNATURE_HEADER: Final = "Stigmem-Signature"
KEY_ID_HEADER: Final = "Stigmem-Key-Id"
#: A notification is accepted while its ``iat`` is within this much of the receiver's clock.
WINDOW_MS: Final = 300_000
MAX_NOTIFICATION_BYTES: Final = 4096
MAX_ID_CHARS: Final = 512  # iss, sub
MAX_KEY_ID_CHARS: Final = 128

#: Every code ``verify`` can raise, in check order.
REJECTION_CODES: tuple[str, ...] = (
    "notification_signature_required", "malformed_notification", "peer_not_registered", "peer_not_active",
    "invalid_signature", "invalid_sub", "notification_expired", "iat_in_future",
)


class NotificationRejected(TokenRejected):
    """A notification failed verification: ``code`` is one of ``REJECTION_CODES`` (or
    ``nonce_already_seen``, raised by the caller).  ``issuer`` and ``skew_ms`` are for the
    audit trail, as for a token (the claimed ``iss`` and ``now - iat``, where read)."""

    def __repr__(self) -> str:
        return f"NotificationRejected(code={self.code!r}, issuer={self.issuer!r}, skew_ms={self.skew_ms!r})"


@dataclass(frozen=True, slots=True)
class SignedNotification:
    """What a sender posts: the body's bytes and the two headers."""

    body: bytes
    signature: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {SIGNATURE_HEADER: self.signature, KEY_ID_HEADER: self.key_id, "Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class VerifiedNotification:
    """A notification that passed every check but its nonce's (the caller's job)."""

    peer: PeerAuth
    nonce: str
    iat_ms: int
    key_id: str  # the key that verified it

    @property
    def nonce_expires_ms(self) -> int:
        """When the notification stops being accepted anywhere: ``iat`` + the window."""
        return self.iat_ms + WINDOW_MS


def mint(signer: Signer, *, issuer: str, audience: str, now_ms: int, nonce: str | None = None) -> SignedNotification:
    """A notification from ``issuer`` to the node ``audience``, signed by ``signer``."""
    if not is_utf8_text(issuer) or not is_utf8_text(audience):
        raise ValueError("issuer and audience must be non-empty strings")
    if type(now_ms) is not int or not 0 <= now_ms <= MAX_TIME_MS:
        raise ValueError("now_ms must be epoch milliseconds")
    body = json.dumps({"typ": NOTIFICATION_TYPE, "iss": issuer, "sub": audience, "iat": now_ms,
                       "nonce": nonce if nonce is not None else uuid7(now_ms)},
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return SignedNotification(body, b64url_encode(signer.sign(body)), signer.key_id)


@dataclass(frozen=True, slots=True)
class _Parsed:
    iss: str
    sub: str
    iat: int
    nonce: str
    signature: bytes
    key_id: str | None


def _malformed(message: str, issuer: str | None = None) -> NotificationRejected:
    return NotificationRejected("malformed_notification", message, issuer=issuer)


def _parse(body: bytes, signature: str, key_id: str | None) -> _Parsed:
    """Step 2: every property of the bytes alone."""
    if len(body) > MAX_NOTIFICATION_BYTES:
        raise _malformed(f"a notification is at most {MAX_NOTIFICATION_BYTES} bytes")
    try:
        claims: Any = STRICT_JSON.decode(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _malformed("the body is not a UTF-8 JSON object") from None
    if not isinstance(claims, dict):
        raise _malformed("the body is not a UTF-8 JSON object")
    iss, sub, iat, nonce = claims.get("iss"), claims.get("sub"), claims.get("iat"), claims.get("nonce")
    reported = iss[:256] if isinstance(iss, str) else None
    if claims.get("typ") != NOTIFICATION_TYPE:
        raise _malformed(f"typ must be {NOTIFICATION_TYPE!r}", reported)
    if not (is_utf8_text(iss) and len(iss) <= MAX_ID_CHARS and is_utf8_text(sub) and len(sub) <= MAX_ID_CHARS):
        raise _malformed(f"iss and sub must be non-empty strings of at most {MAX_ID_CHARS} characters", reported)
    if type(iat) is not int or not 0 <= iat <= MAX_TIME_MS:
        raise _malformed("iat must be an integer number of epoch milliseconds", reported)
    if not (is_utf8_text(nonce) and len(nonce) <= MAX_NONCE_CHARS and "\x00" not in nonce):
        raise _malformed(f"nonce must be a non-empty string of at most {MAX_NONCE_CHARS} characters", reported)
    try:
        raw = b64url_decode(signature)
    except ValueError:
        raw = b""
    if len(raw) != 64:
        raise _malformed(f"{SIGNATURE_HEADER} must be the base64url of a 64-byte signature", reported)
    if key_id is not None and not (is_utf8_text(key_id) and len(key_id) <= MAX_KEY_ID_CHARS):
        raise _malformed(f"{KEY_ID_HEADER} must be a key id", reported)
    return _Parsed(iss, sub, iat, nonce, raw, key_id)


def verify(body: bytes, signature: str | None, key_id: str | None, *, lookup: PeerLookup, our_node_id: str,
           now_ms: int, window_ms: int = WINDOW_MS) -> VerifiedNotification:
    """Verify a notification: its body's bytes and its two headers (None where absent).
    Raises ``NotificationRejected`` with the first failing code of the module's table."""
    if not signature:
        raise NotificationRejected("notification_signature_required",
                                   f"a notification needs a {SIGNATURE_HEADER} header")
    parsed = _parse(body, signature, key_id or None)

    def rejected(code: str, message: str) -> NotificationRejected:
        return NotificationRejected(code, message, issuer=parsed.iss[:256], skew_ms=now_ms - parsed.iat)

    peer = lookup(parsed.iss)
    if peer is None or peer.node_id != parsed.iss:
        raise rejected("peer_not_registered", "the sender is not a registered peer")
    if peer.status != "active":
        raise rejected("peer_not_active", "the sending peer is not active")
    candidates = peer.keys
    if parsed.key_id is not None:
        candidates = tuple(entry for entry in peer.keys if entry[0] == parsed.key_id) or peer.keys
    verified_by = next((kid for kid, public in candidates if verifies(public, parsed.signature, body)), None)
    if verified_by is None:
        raise rejected("invalid_signature", "the signature does not verify under the peer's keys")
    if parsed.sub != our_node_id:
        raise rejected("invalid_sub", "the notification is addressed to another node")
    if now_ms - parsed.iat > window_ms:
        raise rejected("notification_expired", f"the notification is older than {window_ms // 1000} s")
    if parsed.iat - now_ms > window_ms:
        raise rejected("iat_in_future", f"the notification is dated more than {window_ms // 1000} s ahead")
    return VerifiedNotification(peer, parsed.nonce, parsed.iat, verified_by)
