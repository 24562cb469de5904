"""Pure encodings shared by the protocol: base64url, canonical JSON, fingerprints, key ids.

No I/O, no HTTP, no SQL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any, TypeGuard


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_TO_STANDARD = bytes.maketrans(b"-_", b"+/")  # bytes.translate: one table lookup a byte, unlike str.translate
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# The characters that may end a canonical text of each length mod 4 (their unused low
# bits must be zero): with 2 leftover characters 4 bits are unused, with 3, 2 bits.
_LAST_OK = {2: frozenset(_ALPHABET[::16]), 3: frozenset(_ALPHABET[::4])}


def b64url_decode(text: str | bytes) -> bytes:
    """Strict base64url (RFC 7515 §2): no padding, no characters outside the alphabet, no
    stray low bits in the last character, so that each byte string has exactly one text
    form (a key or signature cannot be written two ways).  Raises ``ValueError``."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError as exc:
            raise ValueError("base64url text must be ASCII") from exc
    if not isinstance(text, str) or not text.isascii() or "+" in text or "/" in text or "=" in text:
        raise ValueError("not base64url")
    rest = len(text) % 4
    if rest == 1 or (rest and text[-1] not in _LAST_OK[rest]):
        raise ValueError("not canonical base64url")
    try:
        return binascii.a2b_base64(text.encode("ascii").translate(_TO_STANDARD) + b"=" * (-len(text) % 4),
                                   strict_mode=True)
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc


def sorted_json(obj: Any) -> bytes:
    """Compact, key-sorted JSON with ASCII escapes.

    This is the byte form peer declarations are signed over (the reference node signs
    ``json.dumps(fields, sort_keys=True, separators=(",", ":"))``, whose default escapes
    non-ASCII as ``\\uXXXX``).
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _jcs(obj: Any, out: list[str]) -> None:
    if obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, (int, float)):
        raise TypeError("canonical JSON here carries no numbers (see encoding.jcs)")
    elif isinstance(obj, str):
        out.append(json.dumps(obj, ensure_ascii=False))
    elif isinstance(obj, (list, tuple)):
        out.append("[")
        for i, item in enumerate(obj):
            if i:
                out.append(",")
            _jcs(item, out)
        out.append("]")
    elif isinstance(obj, dict):
        if not all(isinstance(key, str) for key in obj):
            raise TypeError("JSON object keys must be strings")
        out.append("{")
        # RFC 8785 §3.2.3: sort by UTF-16 code units.
        keys = sorted(obj, key=lambda k: k.encode("utf-16-be", "surrogatepass"))
        for i, key in enumerate(keys):
            if i:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _jcs(obj[key], out)
        out.append("}")
    else:
        raise TypeError(f"cannot canonicalise {type(obj).__name__}")


def _plain(obj: Any) -> bool:
    """True when ``json.dumps(sort_keys=True, compact, ensure_ascii=False)`` is already JCS:
    no numbers and ASCII keys (so code-point order is UTF-16 order)."""
    if obj is None or isinstance(obj, (str, bool)):
        return True
    if isinstance(obj, (list, tuple)):
        return all(_plain(x) for x in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, str) and k.isascii() and _plain(v) for k, v in obj.items())
    return False


def jcs(obj: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON, UTF-8, of a value made of objects, arrays, strings,
    booleans and null.

    Numbers are refused (``TypeError``): nothing this node signs with JCS (the origin
    tuple, the manifest) holds one, and the reference node signs those values with
    ``canonicaljson``, which agrees with RFC 8785 on such values but writes numbers
    differently (``1e-06`` where RFC 8785 writes ``0.000001``), so a signed number could
    not be verified by both.  Refusing keeps a future mistake from going out silently
    (see docs/protocol.md, "Canonical JSON").  A lone surrogate in a string raises
    ``ValueError`` (``UnicodeEncodeError``), as RFC 8785 requires valid Unicode.
    """
    if _plain(obj):
        # Same bytes as the general path below, an order of magnitude faster.
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    out: list[str] = []
    _jcs(obj, out)
    return "".join(out).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(pubkey_b64: str) -> str:
    """Operator-facing key fingerprint: ``sha256:`` + hex SHA-256 of the base64url key *text*.

    Reference-compatible: the reference node hashes the text, not the raw 32 bytes.
    """
    return "sha256:" + sha256_hex(pubkey_b64.encode("utf-8", "surrogatepass"))


def key_id(raw_pubkey: bytes) -> str:
    """Key id of an Ed25519 public key: ``sha256:`` + first 32 hex digits of SHA-256(raw key)."""
    return "sha256:" + sha256_hex(raw_pubkey)[:32]


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member name")
    return obj


def reject_json_constant(name: str) -> Any:
    """A ``parse_constant`` hook: NaN, Infinity and -Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")


#: Strict JSON: duplicate member names and NaN/Infinity are errors.  Built once (json.loads
#: with hooks would build a decoder per call).
STRICT_JSON = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=reject_json_constant)


def is_utf8_text(value: object) -> TypeGuard[str]:
    """A non-empty ``str`` that encodes as UTF-8 (no lone surrogates from ``\\ud800`` escapes)."""
    if not isinstance(value, str) or not value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
