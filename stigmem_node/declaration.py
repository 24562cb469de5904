"""Signed peer declarations: canonical bytes, signing, verification.

A declaration says "I am node_id at node_url, I sign with federation_pubkey, and I am
willing to share allowed_scopes", signed at signed_at.  The signed bytes are the compact,
key-sorted JSON of exactly those five fields (reference-compatible, see docs/protocol.md).

Verification never raises on bad input: it returns a reason code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature

from stigmem_node import node_id as node_ids
from stigmem_node import node_url as node_urls
from stigmem_node.clock import iso_seconds, parse_rfc3339
from stigmem_node.config import SCOPES
from stigmem_node.encoding import b64url_decode, b64url_encode, sorted_json
from stigmem_node.identity import NodeIdentity, public_key_from_b64

SIGNED_FIELDS = ("allowed_scopes", "federation_pubkey", "node_id", "node_url", "signed_at")
MAX_FIELD_LEN = 2048
MAX_AGE = timedelta(days=7)

# Reason codes (stable; listed in docs/protocol.md).
MALFORMED = "malformed_declaration"
INVALID_SCOPE = "invalid_scope"
INVALID_PUBKEY = "invalid_pubkey"
INVALID_SIGNATURE = "invalid_signature"
STALE = "declaration_stale"
FUTURE = "declaration_in_future"
INVALID_NODE_ID = node_ids.InvalidNodeId.code
INVALID_NODE_URL = node_urls.InvalidNodeUrl.code


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


class DeclarationRejected(Exception):
    """Raised only by ``parse``; carries a reason code and the offending field."""

    def __init__(self, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field = field


def canonical_bytes(fields: dict[str, Any]) -> bytes:
    return sorted_json({k: fields[k] for k in SIGNED_FIELDS})


def sign(identity: NodeIdentity, scopes: tuple[str, ...] | list[str], now: datetime) -> Declaration:
    fields = {
        "allowed_scopes": sorted(set(scopes)),
        "federation_pubkey": identity.public_key,
        "node_id": identity.node_id,
        "node_url": identity.node_url,
        "signed_at": iso_seconds(now),
    }
    sig = b64url_encode(identity.sign(canonical_bytes(fields)))
    return Declaration(
        fields["node_url"], fields["node_id"], fields["federation_pubkey"], tuple(fields["allowed_scopes"]),
        fields["signed_at"], sig,
    )


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
        obj["node_url"], obj["node_id"], obj["federation_pubkey"], tuple(scopes), obj["signed_at"], obj["declaration_sig"],
    )


def check(decl: Declaration, now: datetime, *, leeway: timedelta, max_age: timedelta = MAX_AGE) -> str | None:
    """Signature and freshness.  Returns None when valid, else a reason code."""
    try:
        key = public_key_from_b64(decl.federation_pubkey)
    except ValueError:
        return INVALID_PUBKEY
    try:
        sig = b64url_decode(decl.declaration_sig)
    except ValueError:
        return INVALID_SIGNATURE
    try:
        key.verify(sig, canonical_bytes(decl.signed_fields()))
    except InvalidSignature:
        return INVALID_SIGNATURE
    try:
        signed_at = parse_rfc3339(decl.signed_at)
    except ValueError:
        return MALFORMED
    if signed_at > now + leeway:
        return FUTURE
    if now - signed_at > max_age:
        return STALE
    return None


def verify(obj: Any, now: datetime, *, leeway: timedelta, max_age: timedelta = MAX_AGE) -> tuple[Declaration | None, str | None]:
    """Parse and check; never raises.  Returns (declaration or None, reason or None)."""
    try:
        decl = parse(obj)
    except DeclarationRejected as exc:
        return None, exc.reason
    return decl, check(decl, now, leeway=leeway, max_age=max_age)
