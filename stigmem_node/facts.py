"""Facts: the model, validation of new and pulled facts, and the wire form.

Pure: no HTTP, no SQL, no key storage.  The value rules (types, stored text, integers and
floats) are in ``stigmem_node.values``, the origin block and its signature in
``stigmem_node.origin``, the clock that stamps facts in ``stigmem_node.hlc``.

Wire compatibility with the reference node (PyPI ``stigmem-node==0.9.0a12``)
===========================================================================

**CID v2** is ``stigmem_node.cid``'s.

**Ingesting reference facts.**  ``fact_from_wire`` recomputes the CID from ``str()`` of
the wire value; if that fails for an integral number it retries with the number's other
text (see ``values``) and on a match stores that text.

**Limits.**  entity, relation and source <= 2048 characters (the reference's limit,
characters not bytes); ids <= 256 characters; value text <= 256 KiB as UTF-8.

**Errors.**  Validation raises only ``ValidationError``: ``invalid_fact``,
``value_too_large``, ``cid_mismatch``, or ``internal_validation_error`` when a check
itself fails unexpectedly (a bug, logged with its traceback; never a rejection).
"""

from __future__ import annotations

import json
import json.encoder
import logging
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from stigmem_node.cid import cid_of, compute_cid
from stigmem_node.clock import iso, parse_rfc3339
from stigmem_node.errors import InternalValidationError, ValidationError
from stigmem_node.hlc import format_hlc, parse_hlc
from stigmem_node.uuid7 import uuid7
from stigmem_node.values import (
    decode_value,
    invalid_fact,
    new_value_text,
    utf8,
    value_object,
    wire_value_text,
)
from stigmem_node.vocabulary import SCOPES, VALUE_TYPES

__all__ = [
    "DEFAULT_CONFIDENCE", "DEFAULT_SCOPE", "DEFAULT_TENANT", "MAX_ID_CHARS", "MAX_NAME_CHARS",
    "Fact", "FactInput", "Origin",
    "check_string", "cid_of", "compute_cid", "expiry_key", "fact_from_wire", "fact_wire", "is_instruction",
    "local_fact_text", "new_fact",
    "parse_time", "required_text", "unexpected_error", "validate_new_fact", "value_from_text",
]

log = logging.getLogger("stigmem_node.facts")

DEFAULT_CONFIDENCE: Final = 1.0
DEFAULT_SCOPE: Final = "local"
DEFAULT_TENANT: Final = "default"

MAX_NAME_CHARS: Final = 2048
MAX_ID_CHARS: Final = 256
MAX_TIME_CHARS: Final = 64

# A JSON string literal, escaped as json.dumps(ensure_ascii=False) escapes it (C speed).
_json_string: Final = json.encoder.encode_basestring
_CID_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")
_HLC_FIXED_RE: Final = re.compile(r"[0-9]{13}\.[0-9]{3}")  # what format_hlc writes
_CTRL_RE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CTRL_OR_SPACE_RE: Final = re.compile(r"[\x00-\x20\x7f-\x9f\s]")
_JSON_NUMBER_RE: Final = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
# RFC 3339 date-time (section 5.6), fractions up to nanoseconds: the only valid_until text a
# new fact may carry, since it is echoed and signed exactly as given.
_RFC3339_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
                                r"([Zz]|[+-][0-9]{2}:[0-9]{2})")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Origin:
    """The origin block of a fact: who asserted it and under which grant (see ``origin``)."""

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


# --------------------------------------------------------------------------- field checks


def unexpected_error(field: str | None, exc: Exception) -> InternalValidationError:
    """The guard of every validator: an exception other than ``ValidationError`` is a bug in
    the checks, not a verdict on the input.  Log it with its traceback (call this inside the
    ``except`` block) and answer ``internal_validation_error``, never ``invalid_fact``."""
    log.exception("unexpected %s while validating a fact (field %s)", type(exc).__name__, field or "-")
    return InternalValidationError(
        message=f"the node could not validate this input ({type(exc).__name__}); the error is logged",
        field=field,
    )


def required_text(
    obj: dict[str, Any],
    key: str,
    field: str,
    *,
    max_chars: int = MAX_NAME_CHARS,
    strict: bool = True,
) -> str:
    """``obj[key]``, a present, non-null string passing ``check_string``."""
    if key not in obj or obj[key] is None:
        raise invalid_fact(field, f"{field} is required")
    value = obj[key]
    if not isinstance(value, str):
        raise invalid_fact(field, f"{field} must be a string")
    check_string(value, field, max_chars=max_chars, strict=strict)
    return value


def check_string(value: str, field: str, *, max_chars: int, strict: bool) -> None:
    """Non-empty (and, ``strict``, not blank and without control characters; else no NUL),
    at most ``max_chars`` characters, valid Unicode."""
    if not value or (strict and not value.strip()):
        raise invalid_fact(field, f"{field} must not be empty")
    if len(value) > max_chars:
        raise invalid_fact(field, f"{field} is longer than {max_chars} characters")
    if strict:
        if _CTRL_RE.search(value):
            raise invalid_fact(field, f"{field} must not contain control characters")
    elif "\x00" in value:
        raise invalid_fact(field, f"{field} must not contain NUL characters")
    if not value.isascii():  # ASCII text is valid Unicode: only other text may hold a lone surrogate
        utf8(value, field)


def _confidence(obj: dict[str, Any], field: str, *, required: bool) -> float:
    raw = obj.get("confidence")
    if raw is None:
        if required:
            raise invalid_fact(field, f"{field} is required")
        return DEFAULT_CONFIDENCE
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise invalid_fact(field, f"{field} must be a number between 0 and 1")
    try:
        value = float(raw)
    except OverflowError:
        raise invalid_fact(field, f"{field} must be a number between 0 and 1") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise invalid_fact(field, f"{field} must be a number between 0 and 1")
    return value


def _scope(obj: dict[str, Any], field: str, *, required: bool) -> str:
    raw = obj.get("scope")
    if raw is None:
        if required:
            raise invalid_fact(field, f"{field} is required")
        return DEFAULT_SCOPE
    if not isinstance(raw, str) or raw not in SCOPES:
        raise invalid_fact(field, f"{field} must be one of {', '.join(SCOPES)}")
    return raw


def parse_time(text: Any) -> datetime:
    """Parse an ISO 8601 / RFC 3339 time as the reference does (``Z`` allowed, naive = UTC).

    Raises ``ValueError``.
    """
    if not isinstance(text, str) or not 10 <= len(text) <= MAX_TIME_CHARS or not text.isascii():
        raise ValueError("not a timestamp")
    value = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def expiry_key(valid_until: str | None) -> str | None:
    """The stored, comparable form of a ``valid_until`` (UTC, microseconds, ``Z``: it sorts
    as text, so storage filters expired facts with ``valid_until > now``).  The fact itself
    keeps the text it was given; this is only what the ``valid_until`` column holds.

    Raises ``ValueError`` for a text ``parse_time`` refuses (callers validated it before).
    """
    return None if valid_until is None else iso(parse_time(valid_until))


# --------------------------------------------------------------------------- new facts


def validate_new_fact(obj: Any) -> FactInput:
    """Validate a POST /v1/facts body; raise ``ValidationError`` naming the bad field.

    Shape: ``{"entity", "relation", "value": {"type", "v", "interpret_as"?}, "source",
    "confidence"? (default 1.0), "scope"? (default "local"), "valid_until"? (an RFC 3339
    date-time, kept, signed and echoed exactly as given; ``expiry_key`` is its stored,
    comparable form)}``.  Unknown members are ignored,
    as the reference ignores them.  Missing and ``null`` optional members take the default.
    """
    try:
        return _validate_new_fact(obj)
    except ValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug in the checks: internal_validation_error, logged
        raise unexpected_error(None, exc) from None


def _validate_new_fact(obj: Any) -> FactInput:
    if not isinstance(obj, dict):
        raise invalid_fact(None, "fact must be a JSON object")
    entity = required_text(obj, "entity", "entity")
    relation = required_text(obj, "relation", "relation")
    source = required_text(obj, "source", "source")
    value, vtype, interp = value_object(obj, "")
    value_v = new_value_text(vtype, value.get("v"))
    confidence = _confidence(obj, "confidence", required=False)
    scope = _scope(obj, "scope", required=False)
    valid_until = obj.get("valid_until")
    if valid_until is not None:
        try:
            if not isinstance(valid_until, str) or not _RFC3339_RE.fullmatch(valid_until):
                raise ValueError("not RFC 3339")
            parse_rfc3339(valid_until)  # a real instant, in range once at UTC
        except (TypeError, ValueError, OverflowError):
            raise invalid_fact("valid_until", "valid_until must be an RFC 3339 time with an offset, or null") from None
    return FactInput(entity=entity, relation=relation, value_type=vtype, value_v=value_v, interpret_as=interp,
                     source=source, confidence=confidence, scope=scope, valid_until=valid_until)


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
            raise invalid_fact(field, f"a boolean value is true or false, not {text[:40]!r}")
        return text == "true"
    if value_type == "number":
        if not _JSON_NUMBER_RE.fullmatch(text):
            raise invalid_fact(field, f"a number value is a JSON number such as 42, -1.5 or 6.02e23, not {text[:40]!r}")
        return json.loads(text)
    if value_type == "null":
        if text != "null":
            raise invalid_fact(field, f"the value of a null fact is null, not {text[:40]!r}")
        return None
    if value_type not in VALUE_TYPES:
        raise invalid_fact("value.type", f"value.type must be one of {', '.join(VALUE_TYPES)}")
    return text


def new_fact(
    inp: FactInput,
    *,
    origin_node_id: str,
    hlc: str,
    timestamp: str,
    fact_id: str | None = None,
    cid: str | None = None,
) -> Fact:
    """A local fact from validated input: a fresh time-ordered id (unless given; a UUIDv7
    stamped with the wall time of ``hlc``) and its CID (``cid``: the caller's ``inp.cid``,
    already computed)."""
    return Fact(id=fact_id or uuid7(parse_hlc(hlc)[0]), cid=cid or inp.cid, entity=inp.entity, relation=inp.relation,
                value_type=inp.value_type, value_v=inp.value_v, interpret_as=inp.interpret_as, source=inp.source,
                timestamp=timestamp, hlc=hlc, valid_until=inp.valid_until, confidence=inp.confidence,
                scope=inp.scope, origin_node_id=origin_node_id)


def is_instruction(fact: Fact | FactInput) -> bool:
    """Whether a reference node treats the fact as an instruction: ``interpret_as`` is
    ``instruction`` or the entity or relation starts with ``instruction:``.  A reference
    receiver without a quarantine garden fails its whole pull cycle on such a fact."""
    return (
        fact.interpret_as == "instruction"
        or fact.entity.startswith("instruction:")
        or fact.relation.startswith("instruction:")
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


def local_fact_text(inp: FactInput | Fact, *, fact_id: str, cid: str, timestamp: str, hlc: str,
                    origin_node_id: str, received_from: str | None = None) -> str:
    """The compact JSON text (non-ASCII kept) of ``fact_wire(new_fact(inp, ...))`` (or, given
    a received ``Fact`` and its sender, of its ``fact_wire`` as stored), assembled
    directly: members in ``fact_wire``'s order, strings escaped by the encoder
    ``json.dumps(ensure_ascii=False)`` uses, numbers written as it writes them (a test
    compares the two for any input).  Raises ``ValueError`` where json.dumps would (a
    non-finite number, which validation never lets through)."""
    v = decode_value(inp.value_type, inp.value_v)
    if v is None:
        value = "null"
    elif v is True or v is False:
        value = "true" if v else "false"
    elif type(v) is int:
        value = int.__repr__(v)
    elif type(v) is float:
        if not math.isfinite(v):
            raise ValueError("Out of range float values are not JSON compliant")
        value = float.__repr__(v)
    else:
        value = _json_string(v)
    confidence = float(inp.confidence)
    if not math.isfinite(confidence):
        raise ValueError("Out of range float values are not JSON compliant")
    return "".join((
        '{"id":', _json_string(fact_id), ',"entity":', _json_string(inp.entity),
        ',"relation":', _json_string(inp.relation), ',"value":{"type":', _json_string(inp.value_type),
        ',"v":', value, ',"interpret_as":', _json_string(inp.interpret_as), '},"source":', _json_string(inp.source),
        ',"timestamp":', _json_string(timestamp), ',"hlc":', _json_string(hlc),
        ',"received_from":', "null" if received_from is None else _json_string(received_from),
        ',"valid_until":', "null" if inp.valid_until is None else _json_string(inp.valid_until),
        ',"confidence":', float.__repr__(confidence), ',"scope":', _json_string(inp.scope),
        ',"origin_node_id":', _json_string(origin_node_id), ',"cid":', _json_string(cid), "}",
    ))


def fact_from_wire(
    obj: Any,
    *,
    origin_node_id: str = "",
    field_prefix: str = "",
    origin: Origin | None = None,
    origin_sig: str | None = None,
) -> Fact:
    """Validate a pulled fact and check its CID; raise only ``ValidationError``.

    Codes: ``invalid_fact`` (shape), ``value_too_large``, ``cid_mismatch`` (field ``cid``),
    ``internal_validation_error`` (a bug in the checks, logged).  ``id``, ``timestamp`` and
    ``valid_until`` are kept verbatim (the origin signed the id and valid_until); ``hlc`` is
    the sender's, re-encoded in the fixed-width form, or ``""`` if it sent none (the
    reference then ticks its own clock; do the same with ``HLC.tick``).  ``origin_node_id``
    is the caller's to give (from the verified origin block); ``received_from`` and
    ``received_at`` are left ``None`` for the caller to set.
    """
    try:
        return _fact_from_wire(obj, origin_node_id, field_prefix, origin, origin_sig)
    except ValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug in the checks: internal_validation_error, logged
        raise unexpected_error(field_prefix.rstrip(".") or None, exc) from None


def _fact_from_wire(obj: Any, origin_node_id: str, p: str, origin: Origin | None, origin_sig: str | None) -> Fact:
    if not isinstance(obj, dict):
        raise invalid_fact(p.rstrip(".") or None, "fact must be a JSON object")
    fact_id = required_text(obj, "id", p + "id", max_chars=MAX_ID_CHARS)
    if _CTRL_OR_SPACE_RE.search(fact_id):
        raise invalid_fact(p + "id", f"{p}id must not contain spaces or control characters")
    entity = required_text(obj, "entity", p + "entity", strict=False)
    relation = required_text(obj, "relation", p + "relation", strict=False)
    source = required_text(obj, "source", p + "source", strict=False)
    value, vtype, interp = value_object(obj, p)
    value_v, alt_value_v = wire_value_text(vtype, value.get("v"), p + "value.v")
    timestamp = obj.get("timestamp")
    try:
        if not isinstance(timestamp, str):
            raise TypeError("not a string")
        parse_time(timestamp)
    except (TypeError, ValueError, OverflowError):
        raise invalid_fact(p + "timestamp", f"{p}timestamp must be an ISO 8601 time") from None
    hlc_raw = obj.get("hlc")
    hlc = ""
    if hlc_raw is not None:
        try:  # the fixed-width form is kept as it is; any other is normalised to it
            fixed = type(hlc_raw) is str and _HLC_FIXED_RE.fullmatch(hlc_raw)
            hlc = hlc_raw if fixed else format_hlc(*parse_hlc(hlc_raw))
        except ValueError:
            raise invalid_fact(p + "hlc", f"{p}hlc must be a hybrid logical clock '<wall ms>.<counter>'") from None
    valid_until = obj.get("valid_until")
    if valid_until is not None:
        try:
            parse_time(valid_until)
        except (TypeError, ValueError, OverflowError):
            raise invalid_fact(p + "valid_until", f"{p}valid_until must be an ISO 8601 time or null") from None
    confidence = _confidence(obj, p + "confidence", required=True)
    scope = _scope(obj, p + "scope", required=True)
    cid = obj.get("cid")
    if not isinstance(cid, str) or not _CID_RE.fullmatch(cid):
        raise invalid_fact(p + "cid", f"{p}cid must be 'sha256:' and 64 lowercase hex digits")

    def cid_with(text: str) -> str:
        return compute_cid(entity=entity, relation=relation, value_type=vtype, value_v=text, source=source,
                           scope=scope, confidence=confidence, interpret_as=interp)

    if cid_with(value_v) != cid:
        if alt_value_v is not None and cid_with(alt_value_v) == cid:
            value_v = alt_value_v
        else:
            raise invalid_fact(p + "cid", "cid does not match the fact's content", code="cid_mismatch")
    return Fact(id=fact_id, cid=cid, entity=entity, relation=relation, value_type=vtype, value_v=value_v,
                interpret_as=interp, source=source, timestamp=timestamp, hlc=hlc, valid_until=valid_until,
                confidence=confidence, scope=scope, origin_node_id=origin_node_id, origin=origin, origin_sig=origin_sig)
