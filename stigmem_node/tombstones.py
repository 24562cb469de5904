"""Tombstones: what remains of an erased fact or entity, and the origin's signature over it.

Pure: the signing key is injected (a ``keys.Signer`` or a bare Ed25519 private key).

A tombstone says that ``origin_node_id`` erased one fact (``kind`` ``fact``: ``fact_id``
and, where known, its ``cid``) or every fact of an entity (``kind`` ``entity``:
``entity``) at ``erased_at``, for ``reason`` (``vocabulary.ERASURE_REASONS``).  It never
carries the erased content: a fact tombstone names no entity, relation, value or source.

**Tombstone signature** (tuple version ``"t2.1"``, domain-separated from the facts'
``"2.1"`` origin tuple of ``origin.py``).  Ed25519 over the RFC 8785 bytes
(``encoding.jcs``) of ``{cid, entity, erased_at, fact_id, kind, origin_node_id, reason,
tv: "t2.1"}``, absent values as null; base64url without padding.  The payload holds only
strings and null.  A fact signature can never verify as a tombstone signature, nor the
reverse: the ``tv`` values differ and the key sets differ.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stigmem_node.encoding import b64url_encode, jcs
from stigmem_node.errors import ValidationError
from stigmem_node.facts import MAX_ID_CHARS, MAX_NAME_CHARS, check_string, parse_time
from stigmem_node.keys import Signer, verify_any
from stigmem_node.node_id import InvalidNodeId
from stigmem_node.node_id import check as check_node_id
from stigmem_node.vocabulary import ERASURE_REASONS, TOMBSTONE_KINDS

__all__ = [
    "TOMBSTONE_TUPLE_VERSION",
    "Tombstone",
    "TombstoneRejected",
    "check_reason",
    "sign_tombstone",
    "tombstone_from_wire",
    "tombstone_payload",
    "verify_tombstone",
]

TOMBSTONE_TUPLE_VERSION: Final = "t2.1"
MAX_CID_CHARS: Final = 128
MAX_SIG_CHARS: Final = 128
WIRE_KEYS: Final = frozenset({"kind", "fact_id", "entity", "cid", "erased_at", "origin_node_id", "reason",
                              "origin_sig"})


class TombstoneRejected(ValidationError):
    """A wire tombstone that does not parse (``invalid_tombstone``), naming the bad field."""

    code = "invalid_tombstone"


@dataclass(frozen=True, slots=True)
class Tombstone:
    kind: str  # "fact" or "entity"
    fact_id: str | None  # kind fact
    entity: str | None  # kind entity
    cid: str | None  # kind fact, where known
    erased_at: str  # RFC 3339 UTC
    origin_node_id: str
    reason: str
    origin_sig: str | None = None

    def signed_fields(self) -> dict[str, Any]:
        return {"kind": self.kind, "fact_id": self.fact_id, "entity": self.entity, "cid": self.cid,
                "erased_at": self.erased_at, "origin_node_id": self.origin_node_id, "reason": self.reason}

    def to_wire(self) -> dict[str, Any]:
        return {**self.signed_fields(), "origin_sig": self.origin_sig}


def check_reason(reason: Any) -> str:
    """``reason`` if it is one of ``ERASURE_REASONS``; else ``invalid_erasure_reason``."""
    if not isinstance(reason, str) or reason not in ERASURE_REASONS:
        raise ValidationError("invalid_erasure_reason", f"reason must be one of {', '.join(ERASURE_REASONS)}",
                              field="reason")
    return reason


def tombstone_payload(*, kind: str, fact_id: str | None, entity: str | None, cid: str | None, erased_at: str,
                      origin_node_id: str, reason: str) -> bytes:
    """RFC 8785 bytes of the signed tombstone tuple, version ``"t2.1"``."""
    return jcs({"cid": cid, "entity": entity, "erased_at": erased_at, "fact_id": fact_id, "kind": kind,
                "origin_node_id": origin_node_id, "reason": reason, "tv": TOMBSTONE_TUPLE_VERSION})


def sign_tombstone(signer: Signer | Ed25519PrivateKey, tombstone: Tombstone) -> str:
    """Ed25519 signature over ``tombstone_payload`` of the tombstone, base64url without padding."""
    return b64url_encode(signer.sign(tombstone_payload(**tombstone.signed_fields())))


def verify_tombstone(public_keys: Ed25519PublicKey | Iterable[Ed25519PublicKey], tombstone: Tombstone) -> bool:
    """True if the tombstone's ``origin_sig`` verifies under any of ``public_keys``; never raises."""
    return verify_any(public_keys, tombstone.origin_sig, lambda: tombstone_payload(**tombstone.signed_fields()))


# --------------------------------------------------------------------------- wire parsing


def _reject(field: str, message: str) -> TombstoneRejected:
    return TombstoneRejected(message=message, field=field)


def _text(obj: dict[str, Any], key: str, p: str, *, max_chars: int, required: bool) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _reject(p + key, f"{p}{key} is required")
        return None
    if not isinstance(value, str):
        raise _reject(p + key, f"{p}{key} must be a string")
    try:
        check_string(value, p + key, max_chars=max_chars, strict=False)
    except ValidationError as exc:
        raise _reject(p + key, exc.message) from None
    return value


def tombstone_from_wire(obj: Any, *, field_prefix: str = "") -> Tombstone:
    """Strictly parse one wire tombstone (signature not checked).  Raises only
    ``TombstoneRejected`` (code ``invalid_tombstone``) naming the bad field."""
    p = field_prefix
    if not isinstance(obj, dict):
        raise _reject(p.rstrip(".") or "tombstone", "a tombstone must be an object")
    unknown = sorted(k for k in obj if k not in WIRE_KEYS)
    if unknown:
        raise _reject(p + str(unknown[0])[:40], "unknown tombstone field")
    kind = obj.get("kind")
    if kind not in TOMBSTONE_KINDS:
        raise _reject(p + "kind", f"{p}kind must be one of {', '.join(TOMBSTONE_KINDS)}")
    fact_id = _text(obj, "fact_id", p, max_chars=MAX_ID_CHARS, required=kind == "fact")
    entity = _text(obj, "entity", p, max_chars=MAX_NAME_CHARS, required=kind == "entity")
    cid = _text(obj, "cid", p, max_chars=MAX_CID_CHARS, required=False)
    if kind == "fact" and entity is not None:
        raise _reject(p + "entity", "a fact tombstone names no entity")
    if kind == "entity" and (fact_id is not None or cid is not None):
        raise _reject(p + ("fact_id" if fact_id is not None else "cid"), "an entity tombstone names no fact")
    erased_at = _text(obj, "erased_at", p, max_chars=64, required=True)
    try:
        parse_time(erased_at)
    except (TypeError, ValueError, OverflowError):
        raise _reject(p + "erased_at", f"{p}erased_at must be an RFC 3339 time") from None
    origin_node_id = _text(obj, "origin_node_id", p, max_chars=MAX_NAME_CHARS, required=True)
    try:
        check_node_id(origin_node_id)
    except InvalidNodeId as exc:
        raise _reject(p + "origin_node_id", exc.message) from None
    reason = obj.get("reason")
    if not isinstance(reason, str) or reason not in ERASURE_REASONS:
        raise _reject(p + "reason", f"{p}reason must be one of {', '.join(ERASURE_REASONS)}")
    sig = obj.get("origin_sig")
    if not isinstance(sig, str) or not sig or len(sig) > MAX_SIG_CHARS:
        raise _reject(p + "origin_sig", f"{p}origin_sig must be a base64url signature")
    return Tombstone(kind=kind, fact_id=fact_id, entity=entity, cid=cid, erased_at=str(erased_at),
                     origin_node_id=str(origin_node_id), reason=reason, origin_sig=sig)
