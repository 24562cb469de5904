"""Time-ordered UUIDs (version 7, RFC 9562): the ids this node gives new facts and the nonces
of the tokens it mints.

Both only have to be unique, and both are kept in B-trees keyed by their text (``facts.id``,
``nonce_cache.nonce``).  Random keys (UUID4) land on a random page each, so every new fact or
accepted token dirties, and at its commit writes, a page of its own.  A UUIDv7 starts with 48
bits of epoch milliseconds; the other 74 variable bits are random.  Keys made one after
another sort next to each other and fill pages one after another, and uniqueness is as good
in practice: 74 random bits within one millisecond.  The text is an ordinary hyphenated
lowercase UUID, which every peer (the reference node included) takes as an opaque id.
"""

from __future__ import annotations

import os
from typing import Final

__all__ = ["uuid7", "uuid7s"]

_MS_MASK: Final = (1 << 48) - 1
# The variant nibble (binary 10xx, RFC 9562) with its two low bits from a random hex digit.
_VARIANT: Final = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def uuid7s(n: int, now_ms: int) -> list[str]:
    """``n`` new UUIDv7 texts stamped ``now_ms`` (taken modulo 2^48), from one read of the
    system's random source.  Each takes 19 random hex digits: 3 for rand_a, one whose two low
    bits go into the variant nibble, and 15 for the rest of rand_b (74 random bits), spliced
    as text (a third of the time of building each one as an integer)."""
    ms = f"{now_ms & _MS_MASK:012x}"
    head = f"{ms[:8]}-{ms[8:]}-7"
    h = os.urandom(10 * n).hex()
    v = _VARIANT
    return [f"{head}{h[i:i + 3]}-{v[h[i + 3]]}{h[i + 4:i + 7]}-{h[i + 7:i + 19]}" for i in range(0, 20 * n, 20)]


def uuid7(now_ms: int) -> str:
    """One new UUIDv7 text stamped ``now_ms``."""
    return uuid7s(1, now_ms)[0]
