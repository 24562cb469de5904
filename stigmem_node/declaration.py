"""Signed peer declarations: canonical bytes, signing, verification.

A declaration says "I am node_id at node_url, I sign with federation_pubkey, and I am
willing to share allowed_scopes", signed at signed_at.  The signed bytes are the compact,
key-sorted JSON of exactly those five fields (reference-compatible, see docs/protocol.md).

Pure: signing takes a ``keys.Signer``; verification raises ``DeclarationRejected`` with a
stable reason code (``parse`` for the shape, ``authenticate`` for the signature and the
freshness, ``verified`` for both) and never anything else on bad input.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from cryptography.exceptions import InvalidSignature

from stigmem_node import node_id as node_ids
from stigmem_node import node_url as node_urls
from stigmem_node.clock import iso_seconds, parse_rfc3339
from stigmem_node.encoding import b64url_decode, b64url_encode, sorted_json
from stigmem_node.errors import ValidationError
from stigmem_node.keys import Signer, public_key_from_b64
from stigmem_node.vocabulary import SCOPES

SIGNED_FIELDS: Final = ("allowed_scopes", "federation_pubkey", "node_id", "node_url", "signed_at")
MAX_FIELD_LEN: Final = 2048
MAX_AGE: Final = timedelta(days=7)

# Reason codes (stable; listed in docs/protocol.md).
MALFORMED: Final = "malformed_declaration"
INVALID_SCOPE: Final = "invalid_scope"
INVALID_PUBKEY: Final = "invalid_pubkey"
INVALID_SIGNATURE: Final = "invalid_signature"
STALE: Final = "declaration_stale"
FUTURE: Final = "declaration_in_future"
INVALID_NODE_ID: Final = node_ids.InvalidNodeId.code
INVALID_NODE_URL: Final = node_urls.InvalidNodeUrl.code


@dataclass(frozen=True)
class Declaration:
    node_url: str
    node_id: str
    federation_pubkey: str
    allowed_scopes: tuple[str, ...]  # in the order signed
    signed_at: str
    declaration_sig: str

    def signed_fields(self) -> dict[str, Any]:
        return {
            "allowed_scopes": list(self.allowed_scopes),
            "federation_pubkey": self.federation_pubkey,
            "node_id": self.node_id,
            "node_url": self.node_url,
            "signed_at": self.signed_at,
        }

    def as_dict(self) -> dict[str, Any]:
        return {**self.signed_fields(), "declaration_sig": self.declaration_sig}


class DeclarationRejected(ValidationError):
    """A declaration is refused: ``reason`` (= ``code``) is one of the reason codes above,
    ``field`` the offending member when there is one."""

    code = MALFORMED

    def __init__(self, reason: str, message: str | None = None, field: str | None = None) -> None:
        super().__init__(reason, message, field=field)

    @property
    def reason(self) -> str:
        return self.code


def canonical_bytes(fields: dict[str, Any]) -> bytes:
    return sorted_json({k: fields[k] for k in SIGNED_FIELDS})


def sign(signer: Signer, scopes: Iterable[str], now: datetime, *, node_id: str, node_url: str) -> Declaration:
    """A declaration of ``node_id`` at ``node_url`` signed by ``signer`` at ``now`` (scopes sorted)."""
    scopes_sorted = sorted(set(scopes))
    fields: dict[str, Any] = {
        "allowed_scopes": scopes_sorted,
        "federation_pubkey": signer.public_key,
        "node_id": node_id,
        "node_url": node_url,
        "signed_at": iso_seconds(now),
    }
    sig = b64url_encode(signer.sign(canonical_bytes(fields)))
    return Declaration(node_url, node_id, signer.public_key, tuple(scopes_sorted), fields["signed_at"], sig)


def parse(obj: Any) -> Declaration:
    """Check the shape of a declaration object.  Raises ``DeclarationRejected``."""
    if not isinstance(obj, dict):
        raise DeclarationRejected(MALFORMED, "a declaration is a JSON object")
    for name in (*SIGNED_FIELDS, "declaration_sig"):
        if name not in obj:
            raise DeclarationRejected(MALFORMED, f"the declaration has no {name}", name)
    for name in ("node_url", "node_id", "federation_pubkey", "signed_at", "declaration_sig"):
        value = obj[name]
        if not isinstance(value, str) or not value or len(value) > MAX_FIELD_LEN:
            raise DeclarationRejected(MALFORMED, f"{name} must be a non-empty string", name)
    scopes = obj["allowed_scopes"]
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        raise DeclarationRejected(MALFORMED, "allowed_scopes must be a non-empty list of strings", "allowed_scopes")
    for s in scopes:
        if s not in SCOPES:
            raise DeclarationRejected(INVALID_SCOPE, f"unknown scope {s[:40]!r}", "allowed_scopes")
    try:
        node_ids.check(obj["node_id"])
    except node_ids.InvalidNodeId as exc:
        raise DeclarationRejected(INVALID_NODE_ID, exc.message, "node_id") from None
    if not obj["node_url"].startswith(("http://", "https://")):
        raise DeclarationRejected(MALFORMED, "node_url must be an http(s) URL", "node_url")
    try:
        node_urls.parse(obj["node_url"])
    except node_urls.InvalidNodeUrl as exc:
        raise DeclarationRejected(INVALID_NODE_URL, exc.message, "node_url") from None
    try:
        parse_rfc3339(obj["signed_at"])
    except ValueError:
        raise DeclarationRejected(MALFORMED, "signed_at must be an RFC 3339 UTC time", "signed_at") from None
    return Declaration(
        obj["node_url"], obj["node_id"], obj["federation_pubkey"], tuple(scopes), obj["signed_at"],
        obj["declaration_sig"],
    )


def authenticate(decl: Declaration, now: datetime, *, leeway: timedelta,
                 max_age: timedelta = MAX_AGE) -> Declaration:
    """Check the signature and the freshness; return ``decl``.

    Raises ``DeclarationRejected``: ``invalid_pubkey``, ``invalid_signature``,
    ``malformed_declaration`` (``signed_at``), ``declaration_in_future`` or
    ``declaration_stale``.
    """
    try:
        key = public_key_from_b64(decl.federation_pubkey)
    except ValueError:
        raise DeclarationRejected(INVALID_PUBKEY, "federation_pubkey is not a valid Ed25519 public key",
                                  "federation_pubkey") from None
    try:
        sig = b64url_decode(decl.declaration_sig)
        key.verify(sig, canonical_bytes(decl.signed_fields()))
    except (ValueError, InvalidSignature):
        raise DeclarationRejected(INVALID_SIGNATURE, "the declaration's signature does not verify",
                                  "declaration_sig") from None
    try:
        signed_at = parse_rfc3339(decl.signed_at)
    except ValueError:
        raise DeclarationRejected(MALFORMED, "signed_at must be an RFC 3339 UTC time", "signed_at") from None
    if signed_at > now + leeway:
        raise DeclarationRejected(FUTURE, "signed_at is in the future", "signed_at")
    if now - signed_at > max_age:
        raise DeclarationRejected(STALE, "the declaration is older than the maximum age", "signed_at")
    return decl


def verified(obj: Any, now: datetime, *, leeway: timedelta, max_age: timedelta = MAX_AGE) -> Declaration:
    """``parse`` then ``authenticate``.  Raises ``DeclarationRejected``."""
    return authenticate(parse(obj), now, leeway=leeway, max_age=max_age)


def verify(obj: Any, now: datetime, *, leeway: timedelta,
           max_age: timedelta = MAX_AGE) -> tuple[Declaration | None, str | None]:
    """Compatibility form of ``verified`` for callers that want no exception: (the parsed
    declaration or None, the reason code or None).  Prefer ``verified``."""
    try:
        decl = parse(obj)
    except DeclarationRejected as exc:
        return None, exc.reason
    try:
        authenticate(decl, now, leeway=leeway, max_age=max_age)
    except DeclarationRejected as exc:
        return decl, exc.reason
    return decl, None
