"""The origin block of a served fact, its signature, and the entries of a v2 pull page.

Pure: the signing key is injected (a ``keys.Signer`` or a bare Ed25519 private key).

**Origin signature** (reference ``origin_sig``, tuple version ``"2.1"``).  Ed25519 over
the RFC 8785 bytes (``encoding.jcs``) of ``{cid, entity_uri, fact_id,
origin_allowed_scopes (sorted), origin_allowed_tenants (sorted), origin_node_id,
origin_tenant, tv: "2.1", valid_until}``; base64url without padding.  The payload holds
only strings, lists of strings and null, for which RFC 8785 and the reference's
``canonicaljson`` give the same bytes.
"""

from __future__ import annotations

import functools
import json.encoder
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from stigmem_node.encoding import b64url_decode, b64url_encode, jcs
from stigmem_node.errors import ValidationError
from stigmem_node.facts import (
    DEFAULT_TENANT,
    Fact,
    FactInput,
    Origin,
    check_string,
    fact_from_wire,
    fact_wire,
    required_text,
    unexpected_error,
)
from stigmem_node.values import invalid_fact

if TYPE_CHECKING:  # a check worker imports this module to check pages: it has no use for the
    # cryptography package (8 MiB a process); the functions that verify import what they use.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from stigmem_node.keys import Signer

__all__ = [
    "ORIGIN_TUPLE_VERSION",
    "PulledEntry",
    "entry_from_wire",
    "fact_origin_signed",
    "origin_for",
    "origin_from_wire",
    "origin_sig_payload",
    "origin_tuple",
    "pull_entry",
    "sign_fact_origin",
    "sign_origin",
    "sign_tuple",
    "verify_fact_origin",
    "verify_origin",
]

ORIGIN_TUPLE_VERSION: Final = "2.1"
# A JSON string literal, escaped as json.dumps(ensure_ascii=False) escapes it (C speed).
_string: Final = json.encoder.encode_basestring
MAX_ORIGIN_LIST: Final = 64
MAX_ORIGIN_ITEM_CHARS: Final = 2048
MAX_SIG_CHARS: Final = 128


@dataclass(frozen=True, slots=True)
class PulledEntry:
    """One entry of a v2 pull page, structurally validated (signature not yet checked)."""

    fact: Fact
    origin: Origin
    origin_sig: str


# --------------------------------------------------------------------------- origin block


def origin_for(fact: Fact | FactInput, *, node_id: str, entity_uri: str, tenant: str = DEFAULT_TENANT) -> Origin:
    """The origin block this node serves for one of its own facts (grant = the fact's scope)."""
    return Origin(
        tenant=tenant,
        node_id=node_id,
        allowed_scopes=(fact.scope,),
        allowed_tenants=(tenant,),
        entity_uri=entity_uri,
    )


def origin_from_wire(obj: Any, *, field: str = "origin") -> Origin:
    """Validate an origin block; raise only ``ValidationError`` (code ``invalid_fact``, or
    ``internal_validation_error`` for a bug in the checks)."""
    if not isinstance(obj, dict):
        raise invalid_fact(field, f"{field} must be an object")
    try:
        tenant = required_text(obj, "tenant", field + ".tenant", strict=False)
        node_id = required_text(obj, "node_id", field + ".node_id", strict=False)
        entity_uri = required_text(obj, "entity_uri", field + ".entity_uri", strict=False)
        scopes = _str_list(obj.get("allowed_scopes"), field + ".allowed_scopes")
        tenants = _str_list(obj.get("allowed_tenants"), field + ".allowed_tenants")
    except ValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug in the checks: internal_validation_error, logged
        raise unexpected_error(field, exc) from None
    return Origin(tenant=tenant, node_id=node_id, allowed_scopes=scopes, allowed_tenants=tenants, entity_uri=entity_uri)


def _str_list(raw: Any, field: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise invalid_fact(field, f"{field} must be a list of strings")
    if len(raw) > MAX_ORIGIN_LIST:
        raise invalid_fact(field, f"{field} has more than {MAX_ORIGIN_LIST} items")
    for i, item in enumerate(raw):
        if not isinstance(item, str):
            raise invalid_fact(f"{field}[{i}]", f"{field} must be a list of strings")
        check_string(item, f"{field}[{i}]", max_chars=MAX_ORIGIN_ITEM_CHARS, strict=False)
    return tuple(raw)


# --------------------------------------------------------------------------- pull entries


def pull_entry(fact: Fact, origin: Origin, origin_sig: str) -> dict[str, Any]:
    """One entry of a v2 pull page: ``{"fact", "origin", "origin_sig"}``."""
    return {"fact": fact_wire(fact), "origin": origin.to_wire(), "origin_sig": origin_sig}


def entry_from_wire(entry: Any, *, field_prefix: str = "", origins: dict[Any, Origin] | None = None) -> PulledEntry:
    """Structurally validate one pulled entry (fact + origin + signature text).

    The fact's CID is checked; the signature, the sender, the scope grant and the tenant
    are the caller's to check (``verify_fact_origin`` and policy).  The returned fact has
    ``origin_node_id`` from the origin block and carries ``origin`` and ``origin_sig``.
    Field paths are ``fact.value.v``, ``origin.tenant``, ``origin_sig`` and so on.  Raises
    only ``ValidationError``.  ``origins``: origin blocks already validated, by their values
    (the entries of one page share one block: it is checked once).
    """
    try:
        return _entry_from_wire(entry, field_prefix, origins)
    except ValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug in the checks: internal_validation_error, logged
        raise unexpected_error(field_prefix.rstrip(".") or None, exc) from None


def _entry_from_wire(entry: Any, p: str, origins: dict[Any, Origin] | None) -> PulledEntry:
    if not isinstance(entry, dict):
        raise invalid_fact(p.rstrip(".") or None, "entry must be an object {fact, origin, origin_sig}")
    raw = entry.get("origin")
    key = _origin_key(raw) if origins is not None else None
    origin = origins.get(key) if origins is not None and key is not None else None
    if origin is None:
        origin = origin_from_wire(raw, field=p + "origin")
        if origins is not None and key is not None and len(origins) < 64:
            origins[key] = origin
    sig = entry.get("origin_sig")
    if not isinstance(sig, str) or not sig or len(sig) > MAX_SIG_CHARS:
        raise invalid_fact(p + "origin_sig", f"{p}origin_sig must be a base64url signature")
    fact = fact_from_wire(entry.get("fact"), origin_node_id=origin.node_id, field_prefix=p + "fact.", origin=origin,
                          origin_sig=sig)
    return PulledEntry(fact=fact, origin=origin, origin_sig=sig)


def _origin_key(raw: Any) -> tuple[Any, ...] | None:
    """An origin block's values, exactly (types included), when it is a plain one: blocks with
    the same key validate to the same ``Origin``."""
    if type(raw) is not dict:
        return None
    scopes, tenants = raw.get("allowed_scopes"), raw.get("allowed_tenants")
    if type(scopes) is not list or type(tenants) is not list:
        return None
    values = (raw.get("tenant"), raw.get("node_id"), raw.get("entity_uri"), *scopes, None, *tenants)
    if not all(type(v) is str for v in values if v is not None):
        return None
    return values


# --------------------------------------------------------------------------- origin signature


def origin_sig_payload(
    fact_id: str,
    cid: str,
    entity_uri: str,
    origin_node_id: str,
    origin_allowed_scopes: Iterable[str],
    origin_allowed_tenants: Iterable[str],
    origin_tenant: str,
    valid_until: str | None,
) -> bytes:
    """RFC 8785 bytes of the signed origin tuple, version ``"2.1"`` (lists sorted).

    When every member is a ``str`` (``valid_until`` may be None), the text is assembled
    directly, members in their sorted order and each string escaped by the encoder
    ``json.dumps(ensure_ascii=False)`` uses: the same bytes as ``jcs`` gives (a test
    compares them), without sorting and walking the object on every fact."""
    scopes = sorted(origin_allowed_scopes)
    tenants = sorted(origin_allowed_tenants)
    if (type(cid) is str and type(entity_uri) is str and type(fact_id) is str and type(origin_node_id) is str
            and type(origin_tenant) is str and (valid_until is None or type(valid_until) is str)
            and all(type(x) is str for x in scopes) and all(type(x) is str for x in tenants)):
        return _tuple_bytes(cid, fact_id, valid_until, _around(entity_uri, origin_node_id, scopes, tenants,
                                                              origin_tenant))
    return jcs(
        {
            "cid": cid,
            "entity_uri": entity_uri,
            "fact_id": fact_id,
            "origin_allowed_scopes": scopes,
            "origin_allowed_tenants": tenants,
            "origin_node_id": origin_node_id,
            "origin_tenant": origin_tenant,
            "tv": ORIGIN_TUPLE_VERSION,
            "valid_until": valid_until,
        }
    )


def sign_origin(signer: Signer | Ed25519PrivateKey, **fields: Any) -> str:
    """Ed25519 signature over ``origin_sig_payload(**fields)``, base64url without padding."""
    return b64url_encode(signer.sign(origin_sig_payload(**fields)))


def verify_origin(
    public_keys: Ed25519PublicKey | Iterable[Ed25519PublicKey],
    signature: Any,
    **fields: Any,
) -> bool:
    """True if ``signature`` verifies over ``origin_sig_payload(**fields)`` under any of
    ``public_keys``; never raises on bad input."""
    from stigmem_node.keys import verify_any

    if not fields.get("entity_uri"):
        return False
    return verify_any(public_keys, signature, lambda: origin_sig_payload(**fields))


def sign_fact_origin(signer: Signer | Ed25519PrivateKey, fact: Fact, origin: Origin) -> str:
    return sign_tuple(signer, origin, fact_id=fact.id, cid=fact.cid, valid_until=fact.valid_until)


def sign_tuple(signer: Signer | Ed25519PrivateKey, origin: Origin, *, fact_id: str, cid: str,
               valid_until: str | None) -> str:
    """``sign_origin`` for a fact of ``origin``'s block: base64url of the signature over
    ``origin_tuple``."""
    return b64url_encode(signer.sign(origin_tuple(origin, fact_id, cid, valid_until)))


def origin_tuple(origin: Origin, fact_id: Any, cid: Any, valid_until: Any) -> bytes:
    """``origin_sig_payload`` of a fact of ``origin``'s block (raising as it does), built
    around the block's text, which is made once per block."""
    try:
        around = _tuple_around(origin)
    except TypeError:  # a block holding lists is not hashable: no cached text, the general path
        around = None
    if around is not None and type(fact_id) is str and type(cid) is str \
            and (valid_until is None or type(valid_until) is str):
        return _tuple_bytes(cid, fact_id, valid_until, around)
    return origin_sig_payload(fact_id, cid, origin.entity_uri, origin.node_id, origin.allowed_scopes,
                              origin.allowed_tenants, origin.tenant, valid_until)


def verify_fact_origin(
    public_keys: Ed25519PublicKey | Iterable[Ed25519PublicKey],
    fact: Fact,
    origin: Origin,
    signature: Any,
) -> bool:
    """True if the fact's origin signature verifies under any of ``public_keys``: the bytes
    ``fact_origin_signed`` builds (those a worker process checks), checked here."""
    signed = fact_origin_signed(fact, origin, signature)
    if signed is None:
        return False
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from stigmem_node.keys import verifies

    keys = [public_keys] if isinstance(public_keys, Ed25519PublicKey) else public_keys
    return any(verifies(key, signed[:64], signed[64:]) for key in keys)


def fact_origin_signed(fact: Fact, origin: Origin, signature: Any) -> bytes | None:
    """The signature's 64 bytes followed by the signed origin tuple: what a verifier checks
    (libsodium's signed-message form), built here so that it can be checked elsewhere (a
    worker process).  None where ``verify_fact_origin`` refuses before any key is tried: no
    entity, a signature that is not base64url of 64 bytes, a tuple that cannot be built."""
    if not origin.entity_uri or not isinstance(signature, str):
        return None
    try:
        sig = b64url_decode(signature)
        data = origin_tuple(origin, fact.id, fact.cid, fact.valid_until)
    except (TypeError, ValueError):
        return None
    return sig + data if len(sig) == 64 else None


@functools.lru_cache(maxsize=64)
def _tuple_around(origin: Origin) -> tuple[str, str] | None:
    """``_around`` for an origin block (the same for every fact of the block), or None for
    one whose members are not all plain strings (``origin_sig_payload`` then takes its
    general path)."""
    members = (origin.entity_uri, origin.node_id, origin.tenant, *origin.allowed_scopes, *origin.allowed_tenants)
    if not all(type(m) is str for m in members):
        return None
    return _around(origin.entity_uri, origin.node_id, sorted(origin.allowed_scopes), sorted(origin.allowed_tenants),
                   origin.tenant)


def _tuple_bytes(cid: str, fact_id: str, valid_until: str | None, around: tuple[str, str]) -> bytes:
    """The signed origin tuple's bytes: a fact's own members in the text ``_around`` gives."""
    return "".join(('{"cid":', _string(cid), around[0], _string(fact_id), around[1],
                    "null" if valid_until is None else _string(valid_until), "}")).encode("utf-8")


def _around(entity_uri: str, node_id: str, scopes: list[str], tenants: list[str], tenant: str) -> tuple[str, str]:
    """The RFC 8785 text of the signed origin tuple around a fact's own members (plain
    strings, lists sorted): (between cid and fact_id, between fact_id and valid_until)."""
    return (''.join((',"entity_uri":', _string(entity_uri), ',"fact_id":')),
            ''.join((',"origin_allowed_scopes":[', ",".join(map(_string, scopes)),
                     '],"origin_allowed_tenants":[', ",".join(map(_string, tenants)),
                     '],"origin_node_id":', _string(node_id), ',"origin_tenant":', _string(tenant),
                     ',"tv":"', ORIGIN_TUPLE_VERSION, '","valid_until":')))
