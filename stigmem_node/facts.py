"""Facts: the model, validation of new and pulled facts, CID v2, origin signatures, HLC.

Pure: no HTTP, no SQL, no key storage.  Keys and clocks are injected.

Wire compatibility with the reference node (PyPI ``stigmem-node==0.9.0a12``)
===========================================================================

**CID v2.**  ``"sha256:" + hex(SHA-256(body))`` where ``body`` is the compact,
key-sorted JSON (``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)``, UTF-8; *not* RFC 8785) of exactly eight members:
``confidence`` (a JSON float, Python ``repr`` form: ``0.9``, ``1.0``, ``1e-05``),
``entity``, ``interpret_as``, ``relation``, ``scope``, ``source``, ``value_type`` and
``value_v``.  ``value_v`` is the *stored text* of the value: ``"true"``/``"false"``
for booleans, ``"null"`` for null, the string itself for string, text, datetime and
ref, and for numbers the text described below.  ``id``, ``timestamp``, ``hlc`` and
``valid_until`` are not covered (``id`` and ``valid_until`` are bound by the origin
signature instead).  The known-answer vectors in ``tests/test_facts.py`` were
computed with the reference's own code.

**Numbers (the reference's integer bug, fixed on our side).**  A reference receiver
recomputes ``value_v`` as ``str(v)`` of the JSON-decoded wire value, so an integer on
the wire hashes as ``"42"`` and a float as ``repr(v)`` (``"42.0"``, ``"1.5"``,
``"1e+20"``, ``"-0.0"``).  The reference itself stores ``str(v)`` of what the client
posted (``"42"`` for ``42``) but serves every number as a float (``42.0``), so its own
integer facts fail its own CID check on the receiver (verified by running its code:
``int 42`` -> served ``42.0`` -> recomputed ``"42.0"`` -> ``cid_mismatch``).

Our rule keeps the integer/float distinction the client made, end to end:

* JSON integer ``n`` (a Python ``int``, never a ``bool``), within the signed 64-bit
  range: ``value_v = str(n)`` (``"42"``, ``"-7"``) and the wire ``v`` is the JSON
  integer ``n``.  Outside that range it is rejected (send it as a float or string).
* JSON float ``x`` (finite; NaN and infinities rejected): ``value_v = repr(x)``, the
  shortest round-trip text (``"42.0"``, ``"1.5"``, ``"1e+20"``, ``"1e-07"``, ``"-0.0"``),
  and the wire ``v`` is the float ``x``.  Any encoder that writes floats in
  shortest round-trip form *keeping them floats* (``json.dumps``, ``orjson``: ``42.0``,
  ``1e+20``) is fine.  **Never encode a fact body with JCS/ECMAScript number
  formatting**: it writes ``42.0`` as ``42``, which a receiver decodes as an integer and
  hashes as ``"42"``.

So ``value_v`` equals ``str()`` of what any JSON decoder (stdlib or orjson) returns for
the wire ``v``: our nodes and reference nodes recompute the CID we computed.  The same
POST body gives the same CID on our node as on a reference node (same integer / float
texts), apart from the reference's entity/source normalisation, which we do not do.

**Ingesting reference facts.**  ``fact_from_wire`` recomputes the CID from ``str()`` of
the wire value.  If that fails, the value is a number, and the wire float is integral,
it retries with the integer text (``42.0`` -> ``"42"``, ``1e+20`` ->
``"100000000000000000000"``); on a match it stores the integer text.  This accepts the
reference's own integer facts whenever the integer is exactly representable as a
double (every ``|n| <= 2**53``, and larger ones that happen to be).  Integers the
reference rounded when serving (e.g. ``9007199254740993`` -> ``9007199254740992.0``)
cannot be recovered by anyone: they fail with ``cid_mismatch``.

**Origin signature.**  Ed25519 over the RFC 8785 bytes of ``{cid, entity_uri, fact_id,
origin_allowed_scopes (sorted), origin_allowed_tenants (sorted), origin_node_id,
origin_tenant, tv: "2.1", valid_until}``; base64url without padding.

**HLC.**  ``"<wall ms, 13 digits>.<counter, 3 digits>"`` (``"1795399679090.007"``), so
text order is causal order.  The reference parses any ``int.int`` form and writes an
unpadded counter (``"1795399679090.7"``); we read both.  A counter that would pass 999
carries into the wall (+1 ms, counter 0), so the width never grows.

**Limits.**  value text <= 256 KiB as UTF-8 (the reference's cap); entity, relation and
source <= 2048 characters (the reference's limit, characters not bytes); ids <= 256
characters.  Local POST values are checked by type (strings for string/text/datetime/
ref, numbers, booleans, null); pulled values are accepted as the reference serves them.
"""

from __future__ import annotations

import json
import math
import re
import threading
import uuid
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from typing import Any, Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stigmem_node.clock import Clock, iso, parse_rfc3339
from stigmem_node.encoding import b64url_decode, b64url_encode, jcs, sha256_hex
from stigmem_node.errors import ValidationError
from stigmem_node.vocabulary import INTERPRET_AS, SCOPES, VALUE_TYPES

__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_SCOPE",
    "DEFAULT_TENANT",
    "MAX_VALUE_BYTES",
    "MAX_NAME_CHARS",
    "MAX_ID_CHARS",
    "ORIGIN_TUPLE_VERSION",
    "FactInput",
    "Fact",
    "Origin",
    "PulledEntry",
    "compute_cid",
    "encode_number",
    "decode_value",
    "validate_new_fact",
    "value_from_text",
    "new_fact",
    "fact_wire",
    "fact_from_wire",
    "is_instruction",
    "origin_for",
    "origin_from_wire",
    "pull_entry",
    "entry_from_wire",
    "origin_sig_payload",
    "sign_origin",
    "verify_origin",
    "sign_fact_origin",
    "verify_fact_origin",
    "parse_time",
    "HLC",
    "parse_hlc",
    "format_hlc",
]

DEFAULT_CONFIDENCE = 1.0
DEFAULT_SCOPE = "local"
DEFAULT_TENANT = "default"
DEFAULT_INTERPRET_AS = "content"

MAX_VALUE_BYTES = 256 * 1024
MAX_NAME_CHARS = 2048
MAX_ID_CHARS = 256
MAX_TIME_CHARS = 64
MAX_ORIGIN_LIST = 64
MAX_ORIGIN_ITEM_CHARS = 2048
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

ORIGIN_TUPLE_VERSION = "2.1"

_CID_RE = re.compile(r"sha256:[0-9a-f]{64}")
_INT_TEXT_RE = re.compile(r"-?[0-9]+")
_CTRL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CTRL_OR_SPACE_RE = re.compile(r"[\x00-\x20\x7f-\x9f\s]")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _invalid(field: str | None, message: str, code: str = "invalid_fact") -> ValidationError:
    return ValidationError(code, message, field=field)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Origin:
    """The origin block of a pulled fact: who asserted it and under which grant."""

    tenant: str
    node_id: str
    allowed_scopes: tuple[str, ...]
    allowed_tenants: tuple[str, ...]
    entity_uri: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "node_id": self.node_id,
            "allowed_scopes": list(self.allowed_scopes),
            "allowed_tenants": list(self.allowed_tenants),
            "entity_uri": self.entity_uri,
        }


@dataclass(frozen=True, slots=True)
class FactInput:
    """A validated new fact (POST /v1/facts), before the node gives it id, time and HLC."""

    entity: str
    relation: str
    value_type: str
    value_v: str
    interpret_as: str
    source: str
    confidence: float
    scope: str
    valid_until: str | None

    @property
    def cid(self) -> str:
        return cid_of(self)

    @property
    def value(self) -> Any:
        return decode_value(self.value_type, self.value_v)


@dataclass(frozen=True, slots=True)
class Fact:
    """One row of the ``facts`` table (without ``seq`` and the encoded ``body``)."""

    id: str
    cid: str
    entity: str
    relation: str
    value_type: str
    value_v: str
    interpret_as: str
    source: str
    timestamp: str
    hlc: str
    valid_until: str | None
    confidence: float
    scope: str
    origin_node_id: str
    origin_sig: str | None = None
    origin: Origin | None = None
    received_from: str | None = None
    received_at: str | None = None

    @property
    def value(self) -> Any:
        """The JSON value ``v`` as served on the wire."""
        return decode_value(self.value_type, self.value_v)

    def computed_cid(self) -> str:
        return cid_of(self)


@dataclass(frozen=True, slots=True)
class PulledEntry:
    """One entry of a v2 pull page, structurally validated (signature not yet checked)."""

    fact: Fact
    origin: Origin
    origin_sig: str


# --------------------------------------------------------------------------- values and CID


def compute_cid(
    *,
    entity: str,
    relation: str,
    value_type: str,
    value_v: str,
    source: str,
    scope: str,
    confidence: float,
    interpret_as: str = DEFAULT_INTERPRET_AS,
) -> str:
    """CID v2, byte-for-byte as the reference computes it (see the module docstring)."""
    body = {
        "confidence": float(confidence),
        "entity": entity,
        "interpret_as": interpret_as,
        "relation": relation,
        "scope": scope,
        "source": source,
        "value_type": value_type,
        "value_v": value_v,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return "sha256:" + sha256_hex(text.encode("utf-8"))


def cid_of(f: FactInput | Fact) -> str:
    """The CID of a fact's content (see ``compute_cid``)."""
    return compute_cid(entity=f.entity, relation=f.relation, value_type=f.value_type, value_v=f.value_v,
                       source=f.source, scope=f.scope, confidence=f.confidence, interpret_as=f.interpret_as)


def encode_number(v: int | float) -> str:
    """Stored text of a number: ``str(int)`` or the float's shortest round-trip ``repr``."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError("not a number")
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError("NaN and infinity are not numbers here")
    return str(int(v)) if isinstance(v, int) else repr(float(v))


def decode_value(value_type: str, value_v: str) -> Any:
    """The wire ``v`` of a stored value (inverse of the stored-text rule)."""
    if value_type == "number":
        if _INT_TEXT_RE.fullmatch(value_v):
            n = int(value_v)
            if INT_MIN <= n <= INT_MAX:
                return n
            return float(n)  # only reachable for integers accepted from reference nodes
        return float(value_v)
    if value_type == "boolean":
        return value_v == "true"
    if value_type == "null":
        return None
    return value_v


# --------------------------------------------------------------------------- field checks


def _text(
    obj: dict[str, Any],
    key: str,
    field: str,
    *,
    max_chars: int = MAX_NAME_CHARS,
    strict: bool = True,
) -> str:
    if key not in obj or obj[key] is None:
        raise _invalid(field, f"{field} is required")
    value = obj[key]
    if not isinstance(value, str):
        raise _invalid(field, f"{field} must be a string")
    _check_string(value, field, max_chars=max_chars, strict=strict)
    return value


def _check_string(value: str, field: str, *, max_chars: int, strict: bool) -> None:
    if not value or (strict and not value.strip()):
        raise _invalid(field, f"{field} must not be empty")
    if len(value) > max_chars:
        raise _invalid(field, f"{field} is longer than {max_chars} characters")
    if strict:
        if _CTRL_RE.search(value):
            raise _invalid(field, f"{field} must not contain control characters")
    elif "\x00" in value:
        raise _invalid(field, f"{field} must not contain NUL characters")
    _utf8(value, field)


def _utf8(value: str, field: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(field, f"{field} is not valid Unicode (lone surrogate)") from None


def _check_value_size(value_v: str, field: str) -> None:
    # Every character is at least one UTF-8 byte: refuse huge strings before encoding them.
    if len(value_v) > MAX_VALUE_BYTES or len(_utf8(value_v, field)) > MAX_VALUE_BYTES:
        raise _invalid(field, f"value is larger than {MAX_VALUE_BYTES} bytes as UTF-8", code="value_too_large")


def _number(v: Any, field: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _invalid(field, f"{field} must be a number for type number")
    if isinstance(v, float) and not math.isfinite(v):
        raise _invalid(field, f"{field} must be a finite number (no NaN or infinity)")
    if isinstance(v, int) and not INT_MIN <= v <= INT_MAX:
        raise _invalid(field, f"{field} is an integer outside the signed 64-bit range; send it as a float or a string")
    return encode_number(v)


def _confidence(obj: dict[str, Any], field: str, *, required: bool) -> float:
    raw = obj.get("confidence")
    if raw is None:
        if required:
            raise _invalid(field, f"{field} is required")
        return DEFAULT_CONFIDENCE
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise _invalid(field, f"{field} must be a number between 0 and 1")
    try:
        value = float(raw)
    except OverflowError:
        raise _invalid(field, f"{field} must be a number between 0 and 1") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise _invalid(field, f"{field} must be a number between 0 and 1")
    return value


def _scope(obj: dict[str, Any], field: str, *, required: bool) -> str:
    raw = obj.get("scope")
    if raw is None:
        if required:
            raise _invalid(field, f"{field} is required")
        return DEFAULT_SCOPE
    if not isinstance(raw, str) or raw not in SCOPES:
        raise _invalid(field, f"{field} must be one of {', '.join(SCOPES)}")
    return raw


def _value_obj(obj: dict[str, Any], prefix: str) -> tuple[dict[str, Any], str, str]:
    field = prefix + "value"
    value = obj.get("value")
    if value is None:
        raise _invalid(field, f"{field} is required")
    if not isinstance(value, dict):
        raise _invalid(field, f"{field} must be an object {{type, v, interpret_as}}")
    vtype = value.get("type")
    if not isinstance(vtype, str) or vtype not in VALUE_TYPES:
        raise _invalid(field + ".type", f"{field}.type must be one of {', '.join(VALUE_TYPES)}")
    interp = value.get("interpret_as")
    if interp is None:
        interp = DEFAULT_INTERPRET_AS
    elif not isinstance(interp, str) or interp not in INTERPRET_AS:
        raise _invalid(field + ".interpret_as", f"{field}.interpret_as must be content or instruction")
    return value, vtype, interp


def parse_time(text: Any) -> datetime:
    """Parse an ISO 8601 / RFC 3339 time as the reference does (``Z`` allowed, naive = UTC).

    Raises ``ValueError``.
    """
    if not isinstance(text, str) or not 10 <= len(text) <= MAX_TIME_CHARS or not text.isascii():
        raise ValueError("not a timestamp")
    value = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


# --------------------------------------------------------------------------- new facts


def validate_new_fact(obj: Any) -> FactInput:
    """Validate a POST /v1/facts body; raise ``ValidationError`` naming the bad field.

    Shape: ``{"entity", "relation", "value": {"type", "v", "interpret_as"?}, "source",
    "confidence"? (default 1.0), "scope"? (default "local"), "valid_until"? (RFC 3339 with
    an offset, stored normalised to UTC with microseconds)}``.  Unknown members are ignored,
    as the reference ignores them.  Missing and ``null`` optional members take the default.
    """
    try:
        return _validate_new_fact(obj)
    except ValidationError:
        raise
    except Exception as exc:  # pragma: no cover - defence in depth: never anything else
        raise _invalid(None, f"invalid fact ({type(exc).__name__})") from None


def _validate_new_fact(obj: Any) -> FactInput:
    if not isinstance(obj, dict):
        raise _invalid(None, "fact must be a JSON object")
    entity = _text(obj, "entity", "entity")
    relation = _text(obj, "relation", "relation")
    source = _text(obj, "source", "source")
    value, vtype, interp = _value_obj(obj, "")
    v = value.get("v")
    field = "value.v"
    if vtype == "null":
        if v is not None:
            raise _invalid(field, "value.v must be null for type null")
        value_v = "null"
    elif v is None:
        raise _invalid(field, f"value.v is required for type {vtype}")
    elif vtype == "boolean":
        if not isinstance(v, bool):
            raise _invalid(field, "value.v must be true or false for type boolean")
        value_v = "true" if v else "false"
    elif vtype == "number":
        value_v = _number(v, field)
    else:
        if not isinstance(v, str):
            raise _invalid(field, f"value.v must be a string for type {vtype}")
        if vtype == "datetime":
            _check_datetime_value(v, field)
        elif vtype == "ref":
            if not v or _CTRL_OR_SPACE_RE.search(v):
                raise _invalid(field, "value.v must be a non-empty reference without spaces or control characters")
            if len(v) > MAX_NAME_CHARS:
                raise _invalid(field, f"value.v is longer than {MAX_NAME_CHARS} characters")
        if "\x00" in v:
            raise _invalid(field, "value.v must not contain NUL characters")
        value_v = v
        _check_value_size(value_v, field)
    confidence = _confidence(obj, "confidence", required=False)
    scope = _scope(obj, "scope", required=False)
    valid_until = obj.get("valid_until")
    if valid_until is not None:
        try:
            valid_until = iso(parse_rfc3339(valid_until))
        except (TypeError, ValueError, OverflowError):
            raise _invalid("valid_until", "valid_until must be an RFC 3339 time with an offset, or null") from None
    return FactInput(
        entity=entity,
        relation=relation,
        value_type=vtype,
        value_v=value_v,
        interpret_as=interp,
        source=source,
        confidence=confidence,
        scope=scope,
        valid_until=valid_until,
    )


_JSON_NUMBER_RE = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def value_from_text(value_type: str, text: str) -> Any:
    """The JSON value ``v`` that ``text`` spells for ``value_type``, for front ends whose
    input is text (the CLI), so that they store exactly what the HTTP API would.

    Booleans are ``true`` or ``false``, numbers are JSON numbers, null is ``null``; the other
    types take the text as it is.  Anything else raises ``ValidationError`` (``invalid_fact``)
    instead of being coerced; the result still goes through ``validate_new_fact``.
    """
    field = "value.v"
    if value_type == "boolean":
        if text not in ("true", "false"):
            raise _invalid(field, f"a boolean value is true or false, not {text[:40]!r}")
        return text == "true"
    if value_type == "number":
        if not _JSON_NUMBER_RE.fullmatch(text):
            raise _invalid(field, f"a number value is a JSON number such as 42, -1.5 or 6.02e23, not {text[:40]!r}")
        return json.loads(text)
    if value_type == "null":
        if text != "null":
            raise _invalid(field, f"the value of a null fact is null, not {text[:40]!r}")
        return None
    if value_type not in VALUE_TYPES:
        raise _invalid("value.type", f"value.type must be one of {', '.join(VALUE_TYPES)}")
    return text


def _check_datetime_value(v: str, field: str) -> None:
    """A datetime value is an RFC 3339 date-time with an offset, or a full date."""
    try:
        if _DATE_RE.fullmatch(v):
            date.fromisoformat(v)
            return
        parse_rfc3339(v)
        if not v.isascii():
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise _invalid(field, "value.v must be an RFC 3339 date-time with an offset, or a date (YYYY-MM-DD)") from None


def new_fact(
    inp: FactInput,
    *,
    origin_node_id: str,
    hlc: str,
    timestamp: str,
    fact_id: str | None = None,
) -> Fact:
    """A local fact from validated input: a fresh UUID4 id (unless given) and its CID."""
    return Fact(
        id=fact_id or str(uuid.uuid4()),
        cid=inp.cid,
        entity=inp.entity,
        relation=inp.relation,
        value_type=inp.value_type,
        value_v=inp.value_v,
        interpret_as=inp.interpret_as,
        source=inp.source,
        timestamp=timestamp,
        hlc=hlc,
        valid_until=inp.valid_until,
        confidence=inp.confidence,
        scope=inp.scope,
        origin_node_id=origin_node_id,
    )


# --------------------------------------------------------------------------- wire


def fact_wire(fact: Fact) -> dict[str, Any]:
    """The fact as served in a pull (the reference ``FactRecord`` members a receiver reads).

    A reference receiver reads ``id, entity, relation, value.{type, v, interpret_as},
    source, timestamp, hlc, valid_until, confidence, scope, cid``; the rest is informative.
    Encode with ``json.dumps``/``orjson``, never with JCS (see the module docstring).
    """
    return {
        "id": fact.id,
        "entity": fact.entity,
        "relation": fact.relation,
        "value": {"type": fact.value_type, "v": fact.value, "interpret_as": fact.interpret_as},
        "source": fact.source,
        "timestamp": fact.timestamp,
        "hlc": fact.hlc,
        "received_from": fact.received_from,
        "valid_until": fact.valid_until,
        "confidence": float(fact.confidence),
        "scope": fact.scope,
        "origin_node_id": fact.origin_node_id,
        "cid": fact.cid,
    }


def fact_from_wire(
    obj: Any,
    *,
    origin_node_id: str = "",
    field_prefix: str = "",
) -> Fact:
    """Validate a pulled fact and check its CID; raise only ``ValidationError``.

    Codes: ``invalid_fact`` (shape), ``value_too_large``, ``cid_mismatch`` (field ``cid``).
    ``id``, ``timestamp`` and ``valid_until`` are kept verbatim (the origin signed the id
    and valid_until); ``hlc`` is the sender's, re-encoded in the fixed-width form, or ``""``
    if it sent none (the reference then ticks its own clock; do the same with ``HLC.tick``).  ``origin_node_id`` is the caller's to
    give (from the verified origin block); ``received_from``/``received_at`` are left
    ``None`` for the caller to set.
    """
    try:
        return _fact_from_wire(obj, origin_node_id, field_prefix)
    except ValidationError:
        raise
    except Exception as exc:  # pragma: no cover - defence in depth: never anything else
        raise _invalid(field_prefix.rstrip(".") or None, f"invalid fact ({type(exc).__name__})") from None


def _fact_from_wire(obj: Any, origin_node_id: str, p: str) -> Fact:
    if not isinstance(obj, dict):
        raise _invalid(p.rstrip(".") or None, "fact must be a JSON object")
    fact_id = _text(obj, "id", p + "id", max_chars=MAX_ID_CHARS)
    if _CTRL_OR_SPACE_RE.search(fact_id):
        raise _invalid(p + "id", f"{p}id must not contain spaces or control characters")
    entity = _text(obj, "entity", p + "entity", strict=False)
    relation = _text(obj, "relation", p + "relation", strict=False)
    source = _text(obj, "source", p + "source", strict=False)
    value, vtype, interp = _value_obj(obj, p)
    v = value.get("v")
    field = p + "value.v"
    alt_value_v: str | None = None
    if vtype == "null":
        if v is not None:
            raise _invalid(field, f"{field} must be null for type null")
        value_v = "null"
    elif vtype == "boolean":
        if not isinstance(v, bool):
            raise _invalid(field, f"{field} must be true or false for type boolean")
        value_v = "true" if v else "false"
    elif vtype == "number":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _invalid(field, f"{field} must be a number for type number")
        if isinstance(v, float) and not math.isfinite(v):
            raise _invalid(field, f"{field} must be a finite number")
        if isinstance(v, int) and not -(2**1023) <= v <= 2**1023:
            raise _invalid(field, f"{field} is too large")
        value_v = encode_number(v)
        if isinstance(v, float) and v.is_integer():
            alt_value_v = str(int(v))  # a reference node's integer, served as a float
        elif isinstance(v, int):
            alt_value_v = repr(float(v))  # a float written without its ".0" by a JCS encoder
    else:
        if not isinstance(v, str):
            raise _invalid(field, f"{field} must be a string for type {vtype}")
        if "\x00" in v:
            raise _invalid(field, f"{field} must not contain NUL characters")
        value_v = v
    _check_value_size(value_v, field)
    timestamp = obj.get("timestamp")
    try:
        parse_time(timestamp)
    except (TypeError, ValueError, OverflowError):
        raise _invalid(p + "timestamp", f"{p}timestamp must be an ISO 8601 time") from None
    hlc_raw = obj.get("hlc")
    hlc = ""
    if hlc_raw is not None:
        try:
            hlc = format_hlc(*parse_hlc(hlc_raw))
        except ValueError:
            raise _invalid(p + "hlc", f"{p}hlc must be a hybrid logical clock '<wall ms>.<counter>'") from None
    valid_until = obj.get("valid_until")
    if valid_until is not None:
        try:
            parse_time(valid_until)
        except (TypeError, ValueError, OverflowError):
            raise _invalid(p + "valid_until", f"{p}valid_until must be an ISO 8601 time or null") from None
    confidence = _confidence(obj, p + "confidence", required=True)
    scope = _scope(obj, p + "scope", required=True)
    cid = obj.get("cid")
    if not isinstance(cid, str) or not _CID_RE.fullmatch(cid):
        raise _invalid(p + "cid", f"{p}cid must be 'sha256:' and 64 lowercase hex digits")
    fields = dict(
        entity=entity,
        relation=relation,
        value_type=vtype,
        source=source,
        scope=scope,
        confidence=confidence,
        interpret_as=interp,
    )
    if compute_cid(value_v=value_v, **fields) != cid:
        if alt_value_v is not None and compute_cid(value_v=alt_value_v, **fields) == cid:
            value_v = alt_value_v
        else:
            raise _invalid(p + "cid", "cid does not match the fact's content", code="cid_mismatch")
    return Fact(
        id=fact_id,
        cid=cid,
        entity=entity,
        relation=relation,
        value_type=vtype,
        value_v=value_v,
        interpret_as=interp,
        source=source,
        timestamp=timestamp,
        hlc=hlc,
        valid_until=valid_until,
        confidence=confidence,
        scope=scope,
        origin_node_id=origin_node_id,
    )


def is_instruction(fact: Fact | FactInput) -> bool:
    """Whether a reference node treats the fact as an instruction: ``interpret_as`` is
    ``instruction`` or the entity or relation starts with ``instruction:``.  A reference
    receiver without a quarantine garden fails its whole pull cycle on such a fact."""
    return (
        fact.interpret_as == "instruction"
        or fact.entity.startswith("instruction:")
        or fact.relation.startswith("instruction:")
    )


def origin_for(fact: Fact, *, node_id: str, entity_uri: str, tenant: str = DEFAULT_TENANT) -> Origin:
    """The origin block this node serves for one of its own facts (grant = the fact's scope)."""
    return Origin(
        tenant=tenant,
        node_id=node_id,
        allowed_scopes=(fact.scope,),
        allowed_tenants=(tenant,),
        entity_uri=entity_uri,
    )


def origin_from_wire(obj: Any, *, field: str = "origin") -> Origin:
    """Validate an origin block; raise only ``ValidationError`` (code ``invalid_fact``)."""
    if not isinstance(obj, dict):
        raise _invalid(field, f"{field} must be an object")
    try:
        tenant = _text(obj, "tenant", field + ".tenant", strict=False)
        node_id = _text(obj, "node_id", field + ".node_id", strict=False)
        entity_uri = _text(obj, "entity_uri", field + ".entity_uri", strict=False)
        scopes = _str_list(obj.get("allowed_scopes"), field + ".allowed_scopes")
        tenants = _str_list(obj.get("allowed_tenants"), field + ".allowed_tenants")
    except ValidationError:
        raise
    except Exception as exc:  # pragma: no cover - defence in depth
        raise _invalid(field, f"invalid origin ({type(exc).__name__})") from None
    return Origin(tenant=tenant, node_id=node_id, allowed_scopes=scopes, allowed_tenants=tenants, entity_uri=entity_uri)


def _str_list(raw: Any, field: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise _invalid(field, f"{field} must be a list of strings")
    if len(raw) > MAX_ORIGIN_LIST:
        raise _invalid(field, f"{field} has more than {MAX_ORIGIN_LIST} items")
    for i, item in enumerate(raw):
        if not isinstance(item, str):
            raise _invalid(f"{field}[{i}]", f"{field} must be a list of strings")
        _check_string(item, f"{field}[{i}]", max_chars=MAX_ORIGIN_ITEM_CHARS, strict=False)
    return tuple(raw)


def pull_entry(fact: Fact, origin: Origin, origin_sig: str) -> dict[str, Any]:
    """One entry of a v2 pull page: ``{"fact", "origin", "origin_sig"}``."""
    return {"fact": fact_wire(fact), "origin": origin.to_wire(), "origin_sig": origin_sig}


def entry_from_wire(entry: Any, *, field_prefix: str = "") -> PulledEntry:
    """Structurally validate one pulled entry (fact + origin + signature text).

    The fact's CID is checked; the signature, the sender, the scope grant and the tenant
    are the caller's to check (``verify_fact_origin`` and policy).  The returned fact has
    ``origin_node_id`` from the origin block and carries ``origin`` and ``origin_sig``.
    Field paths are ``fact.value.v``, ``origin.tenant``, ``origin_sig`` and so on.
    """
    p = field_prefix
    if not isinstance(entry, dict):
        raise _invalid(p.rstrip(".") or None, "entry must be an object {fact, origin, origin_sig}")
    origin = origin_from_wire(entry.get("origin"), field=p + "origin")
    sig = entry.get("origin_sig")
    if not isinstance(sig, str) or not sig or len(sig) > 128:
        raise _invalid(p + "origin_sig", f"{p}origin_sig must be a base64url signature")
    fact = fact_from_wire(entry.get("fact"), origin_node_id=origin.node_id, field_prefix=p + "fact.")
    return PulledEntry(fact=replace(fact, origin=origin, origin_sig=sig), origin=origin, origin_sig=sig)


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
    """RFC 8785 bytes of the signed origin tuple, version ``"2.1"`` (lists sorted)."""
    return jcs(
        {
            "cid": cid,
            "entity_uri": entity_uri,
            "fact_id": fact_id,
            "origin_allowed_scopes": sorted(origin_allowed_scopes),
            "origin_allowed_tenants": sorted(origin_allowed_tenants),
            "origin_node_id": origin_node_id,
            "origin_tenant": origin_tenant,
            "tv": ORIGIN_TUPLE_VERSION,
            "valid_until": valid_until,
        }
    )


def sign_origin(private_key: Ed25519PrivateKey, **fields: Any) -> str:
    """Ed25519 signature over ``origin_sig_payload(**fields)``, base64url without padding."""
    return b64url_encode(private_key.sign(origin_sig_payload(**fields)))


def verify_origin(
    public_keys: Ed25519PublicKey | Iterable[Ed25519PublicKey],
    signature: Any,
    **fields: Any,
) -> bool:
    """True if ``signature`` verifies over ``origin_sig_payload(**fields)`` under any of
    ``public_keys``; never raises on bad input."""
    keys = [public_keys] if isinstance(public_keys, Ed25519PublicKey) else list(public_keys)
    if not keys or not isinstance(signature, str) or not fields.get("entity_uri"):
        return False
    try:
        sig = b64url_decode(signature)
        payload = origin_sig_payload(**fields)
    except (TypeError, ValueError):  # bad base64, lone surrogates, unsortable lists
        return False
    if len(sig) != 64:
        return False
    for key in keys:
        try:
            key.verify(sig, payload)
            return True
        except InvalidSignature:
            continue
    return False


def _signed_fields(fact: Fact, origin: Origin) -> dict[str, Any]:
    return {
        "fact_id": fact.id, "cid": fact.cid, "entity_uri": origin.entity_uri, "origin_node_id": origin.node_id,
        "origin_allowed_scopes": origin.allowed_scopes, "origin_allowed_tenants": origin.allowed_tenants,
        "origin_tenant": origin.tenant, "valid_until": fact.valid_until,
    }


def sign_fact_origin(private_key: Ed25519PrivateKey, fact: Fact, origin: Origin) -> str:
    return sign_origin(private_key, **_signed_fields(fact, origin))


def verify_fact_origin(
    public_keys: Ed25519PublicKey | Iterable[Ed25519PublicKey],
    fact: Fact,
    origin: Origin,
    signature: Any,
) -> bool:
    return verify_origin(public_keys, signature, **_signed_fields(fact, origin))


# --------------------------------------------------------------------------- HLC

HLC_WALL_DIGITS = 13
HLC_COUNTER_DIGITS = 3
HLC_COUNTER_MAX = 10**HLC_COUNTER_DIGITS - 1
HLC_MAX_FUTURE_MS = 300_000  # the reference's default bound
_HLC_RE = re.compile(r"([0-9]{1,13})(?:\.([0-9]{1,18}))?")


def parse_hlc(text: Any) -> tuple[int, int]:
    """``(wall_ms, counter)`` of an HLC in our form or the reference's unpadded form.

    Raises ``ValueError``.
    """
    if not isinstance(text, str):
        raise ValueError("HLC must be a string")
    m = _HLC_RE.fullmatch(text)
    if not m:
        raise ValueError(f"not an HLC: {text[:40]!r}")
    return int(m.group(1)), int(m.group(2) or 0)


def _carry(wall: int, counter: int) -> tuple[int, int]:
    # A counter past the fixed width moves the wall on by 1 ms; order is kept (weakly).
    if counter > HLC_COUNTER_MAX:
        return wall + 1, 0
    return wall, counter


def format_hlc(wall: int, counter: int) -> str:
    """Fixed-width text (13-digit wall, 3-digit counter) so that text order is causal order."""
    wall, counter = _carry(wall, counter)
    if not 0 <= wall < 10**HLC_WALL_DIGITS or counter < 0:
        raise ValueError("HLC out of range")
    return f"{wall:0{HLC_WALL_DIGITS}d}.{counter:0{HLC_COUNTER_DIGITS}d}"


class HLC:
    """Hybrid logical clock, thread-safe.

    ``tick()`` stamps a local write; ``receive(remote)`` merges a peer's HLC and stamps the
    received fact.  Seed it with the largest stored HLC (``HLC(seed=...)`` or ``observe``)
    so that it never goes backwards across a restart, whatever the wall clock does.
    """

    def __init__(self, clock: Clock | None = None, seed: str | None = None) -> None:
        self._clock = clock or Clock()
        self._lock = threading.Lock()
        self._wall = 0
        self._counter = 0
        if seed:
            self.observe(seed)

    def observe(self, hlc: str) -> None:
        """Never issue an HLC at or below ``hlc`` from now on.  Raises ``ValueError``."""
        wall, counter = _carry(*parse_hlc(hlc))
        if wall >= 10**HLC_WALL_DIGITS:
            raise ValueError("HLC beyond the 13-digit range")
        with self._lock:
            if (wall, counter) > (self._wall, self._counter):
                self._wall, self._counter = wall, counter

    @property
    def last(self) -> str:
        with self._lock:
            return format_hlc(self._wall, self._counter)

    def tick(self) -> str:
        now = self._clock.now_ms()
        with self._lock:
            if now > self._wall:
                self._wall, self._counter = now, 0
            else:
                self._wall, self._counter = _carry(self._wall, self._counter + 1)
            return format_hlc(self._wall, self._counter)

    def receive(self, remote: Any, *, max_future_ms: int | None = HLC_MAX_FUTURE_MS) -> str:
        """Merge a remote HLC; return the new local HLC (later than both).

        Raises ``ValidationError``: ``invalid_hlc`` if ``remote`` does not parse,
        ``hlc_skew`` if it is more than ``max_future_ms`` ahead of our wall clock (so a
        peer cannot drag our clock into the future; ``None`` or 0 disables the check).
        A remote clock in the past is harmless and accepted.
        """
        try:
            r_wall, r_counter = parse_hlc(remote)
        except ValueError:
            raise ValidationError("invalid_hlc", "the HLC is not '<wall ms>.<counter>'", field="hlc") from None
        now = self._clock.now_ms()
        if max_future_ms and r_wall - now > max_future_ms:
            raise ValidationError(
                "hlc_skew",
                f"the HLC is {r_wall - now} ms ahead of this node's clock (limit {max_future_ms} ms)",
                field="hlc",
                skew_ms=r_wall - now,
            )
        with self._lock:
            wall = max(now, self._wall, r_wall)
            if wall == self._wall == r_wall:
                counter = max(self._counter, r_counter) + 1
            elif wall == self._wall:
                counter = self._counter + 1
            elif wall == r_wall:
                counter = r_counter + 1
            else:
                counter = 0
            wall, counter = _carry(wall, counter)
            if wall >= 10**HLC_WALL_DIGITS:
                raise ValidationError("invalid_hlc", "the HLC is beyond the 13-digit range", field="hlc")
            self._wall, self._counter = wall, counter
            return format_hlc(wall, counter)
