"""A fact's value: its type, its stored text ``value_v`` (what the CID hashes) and its wire ``v``.

Pure: no HTTP, no SQL.

Numbers (the reference node's integer bug, fixed on our side)
=============================================================

A reference receiver recomputes ``value_v`` as ``str(v)`` of the JSON-decoded wire value,
so an integer on the wire hashes as ``"42"`` and a float as ``repr(v)`` (``"42.0"``,
``"1.5"``, ``"1e+20"``, ``"-0.0"``).  The reference itself stores ``str(v)`` of what the
client posted (``"42"`` for ``42``) but serves every number as a float (``42.0``), so its
own integer facts fail its own CID check on the receiver (verified by running its code:
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
the wire ``v``: our nodes and reference nodes recompute the CID we computed.

**Ingesting reference facts.**  ``wire_value_text`` also offers the other form of an
integral number (``42.0`` -> ``"42"``, ``1e+20`` -> ``"100000000000000000000"``; and
``42`` -> ``"42.0"`` for a float written without its fraction), which the caller tries
when the CID does not match.  This accepts the reference's own integer facts whenever the
integer is exactly representable as a double (every ``|n| <= 2**53``, and larger ones
that happen to be).  Integers the reference rounded when serving (e.g.
``9007199254740993`` -> ``9007199254740992.0``) cannot be recovered by anyone.

**Limits.**  value text <= 256 KiB as UTF-8 (the reference's cap); a ref at most 2048
characters.  Local POST values are checked by type (strings for string/text/datetime/ref,
numbers, booleans, null); pulled values are accepted as the reference serves them.
"""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Any, Final

from stigmem_node.clock import parse_rfc3339
from stigmem_node.errors import ValidationError
from stigmem_node.vocabulary import INTERPRET_AS, VALUE_TYPES

__all__ = [
    "DEFAULT_INTERPRET_AS",
    "INT_MAX",
    "INT_MIN",
    "MAX_REF_CHARS",
    "MAX_VALUE_BYTES",
    "check_value_size",
    "decode_value",
    "encode_number",
    "invalid_fact",
    "new_value_text",
    "utf8",
    "value_object",
    "wire_value_text",
]

DEFAULT_INTERPRET_AS: Final = "content"
MAX_VALUE_BYTES: Final = 256 * 1024
MAX_REF_CHARS: Final = 2048
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1

_INT_TEXT_RE: Final = re.compile(r"-?[0-9]+")
_CTRL_OR_SPACE_RE: Final = re.compile(r"[\x00-\x20\x7f-\x9f\s]")
_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def invalid_fact(field: str | None, message: str, code: str = "invalid_fact") -> ValidationError:
    """The error of a fact that fails a check: ``invalid_fact`` unless another code is given."""
    return ValidationError(code, message, field=field)


def utf8(value: str, field: str) -> bytes:
    """``value`` as UTF-8; ``invalid_fact`` for a lone surrogate."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid_fact(field, f"{field} is not valid Unicode (lone surrogate)") from None


def check_value_size(value_v: str, field: str) -> None:
    """``value_too_large`` past 256 KiB as UTF-8."""
    # Every character is at least one UTF-8 byte: refuse huge strings before encoding them.
    if len(value_v) > MAX_VALUE_BYTES or len(utf8(value_v, field)) > MAX_VALUE_BYTES:
        raise invalid_fact(field, f"value is larger than {MAX_VALUE_BYTES} bytes as UTF-8", code="value_too_large")


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


def value_object(obj: dict[str, Any], prefix: str) -> tuple[dict[str, Any], str, str]:
    """``(value object, type, interpret_as)`` of a fact's ``value`` member, checked."""
    field = prefix + "value"
    value = obj.get("value")
    if value is None:
        raise invalid_fact(field, f"{field} is required")
    if not isinstance(value, dict):
        raise invalid_fact(field, f"{field} must be an object {{type, v, interpret_as}}")
    vtype = value.get("type")
    if not isinstance(vtype, str) or vtype not in VALUE_TYPES:
        raise invalid_fact(field + ".type", f"{field}.type must be one of {', '.join(VALUE_TYPES)}")
    interp = value.get("interpret_as")
    if interp is None:
        interp = DEFAULT_INTERPRET_AS
    elif not isinstance(interp, str) or interp not in INTERPRET_AS:
        raise invalid_fact(field + ".interpret_as", f"{field}.interpret_as must be content or instruction")
    return value, vtype, interp


def new_value_text(vtype: str, v: Any) -> str:
    """``value_v`` of a new fact's value (POST /v1/facts), checked strictly by type."""
    field = "value.v"
    if vtype == "null":
        if v is not None:
            raise invalid_fact(field, "value.v must be null for type null")
        return "null"
    if v is None:
        raise invalid_fact(field, f"value.v is required for type {vtype}")
    if vtype == "boolean":
        if not isinstance(v, bool):
            raise invalid_fact(field, "value.v must be true or false for type boolean")
        return "true" if v else "false"
    if vtype == "number":
        return _number(v, field)
    if not isinstance(v, str):
        raise invalid_fact(field, f"value.v must be a string for type {vtype}")
    if vtype == "datetime":
        _check_datetime_value(v, field)
    elif vtype == "ref":
        if not v or _CTRL_OR_SPACE_RE.search(v):
            raise invalid_fact(field, "value.v must be a non-empty reference without spaces or control characters")
        if len(v) > MAX_REF_CHARS:
            raise invalid_fact(field, f"value.v is longer than {MAX_REF_CHARS} characters")
    if "\x00" in v:
        raise invalid_fact(field, "value.v must not contain NUL characters")
    check_value_size(v, field)
    return v


def wire_value_text(vtype: str, v: Any, field: str) -> tuple[str, str | None]:
    """``(value_v, the other form or None)`` of a pulled value, accepted as the reference
    serves it; the other form is the integral number's other text (see the module
    docstring), for the caller to try when the CID does not match."""
    alt_value_v: str | None = None
    if vtype == "null":
        if v is not None:
            raise invalid_fact(field, f"{field} must be null for type null")
        value_v = "null"
    elif vtype == "boolean":
        if not isinstance(v, bool):
            raise invalid_fact(field, f"{field} must be true or false for type boolean")
        value_v = "true" if v else "false"
    elif vtype == "number":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise invalid_fact(field, f"{field} must be a number for type number")
        if isinstance(v, float) and not math.isfinite(v):
            raise invalid_fact(field, f"{field} must be a finite number")
        if isinstance(v, int) and not -(2**1023) <= v <= 2**1023:
            raise invalid_fact(field, f"{field} is too large")
        value_v = encode_number(v)
        if isinstance(v, float) and v.is_integer():
            alt_value_v = str(int(v))  # a reference node's integer, served as a float
        elif isinstance(v, int):
            alt_value_v = repr(float(v))  # a float written without its ".0" by a JCS encoder
    else:
        if not isinstance(v, str):
            raise invalid_fact(field, f"{field} must be a string for type {vtype}")
        if "\x00" in v:
            raise invalid_fact(field, f"{field} must not contain NUL characters")
        value_v = v
    check_value_size(value_v, field)
    return value_v, alt_value_v


def _number(v: Any, field: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise invalid_fact(field, f"{field} must be a number for type number")
    if isinstance(v, float) and not math.isfinite(v):
        raise invalid_fact(field, f"{field} must be a finite number (no NaN or infinity)")
    if isinstance(v, int) and not INT_MIN <= v <= INT_MAX:
        raise invalid_fact(field, f"{field} is an integer outside the signed 64-bit range; "
                                  "send it as a float or a string")
    return encode_number(v)


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
        raise invalid_fact(field, "value.v must be an RFC 3339 date-time with an offset, "
                                  "or a date (YYYY-MM-DD)") from None
