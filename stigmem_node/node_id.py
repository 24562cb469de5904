"""Node ids: the one check every node id passes, wherever it enters.

A node id names a node to people (``peers list``, audit rows) as well as to programs, so it
must not be able to look like another one.  It is refused (code ``invalid_node_id``) unless:

- it is a non-empty string of at most 256 characters, in Unicode normal form NFC;
- no character is a control (Cc), format (Cf: zero-width and bidi controls such as U+200B,
  U+200D, U+202E, U+2066, U+FEFF), surrogate (Cs), private-use (Co) or unassigned (Cn)
  character, or any space or separator (Zs, Zl, Zp, and every other whitespace);
- no character is one of the invisible fillers and selectors outside those categories
  (``INVISIBLE``: e.g. the Hangul fillers, U+034F, variation selectors);
- it is not a bare UUID (operators name peers by node id or by peer id, a UUID; the two
  must not be confused): use e.g. ``stigmem:node:<uuid>``.

This module is pure: it imports nothing from storage, configuration or HTTP.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from stigmem_node.errors import ValidationError

MAX_LEN = 256
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
# Default-ignorable or blank-looking code points whose category is not refused above.
INVISIBLE = frozenset(
    [0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180F, 0x2800, 0x3164, 0xFFA0,
     *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)]
)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class InvalidNodeId(ValidationError):
    code = "invalid_node_id"


def _fail(why: str) -> InvalidNodeId:
    return InvalidNodeId(message=f"invalid node id: {why}", field="node_id")


def check(node_id: Any) -> str:
    """Return ``node_id`` if it is a valid node id, else raise ``InvalidNodeId``."""
    if not isinstance(node_id, str) or not node_id:
        raise _fail("it must be a non-empty string")
    if len(node_id) > MAX_LEN:
        raise _fail(f"it must be at most {MAX_LEN} characters long")
    for i, c in enumerate(node_id):
        category = unicodedata.category(c)
        if category in REFUSED_CATEGORIES or c.isspace() or ord(c) in INVISIBLE:
            name = unicodedata.name(c, "unnamed")
            raise _fail(f"character {i} is U+{ord(c):04X} {name} ({category}): spaces, separators, control, "
                        "format (zero-width, bidi), private-use, unassigned and invisible characters are not allowed")
    if not unicodedata.is_normalized("NFC", node_id):
        raise _fail("it must be in Unicode normal form NFC")
    if _UUID.fullmatch(node_id):
        raise _fail("it must not be a bare UUID (use e.g. stigmem:node:<uuid>)")
    return node_id
