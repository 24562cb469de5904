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
_RAND_B_MASK: Final = (1 << 62) - 1


def uuid7s(n: int, now_ms: int) -> list[str]:
    """``n`` new UUIDv7 texts stamped ``now_ms`` (taken modulo 2^48), from one read of the
    system's random source."""
    stamp = (now_ms & _MS_MASK) << 80 | 0x7 << 76 | 0b10 << 62
    raw = os.urandom(10 * n)
    out = []
    for i in range(0, 10 * n, 10):
        random = int.from_bytes(raw[i:i + 10])  # 80 bits: 12 for rand_a, 62 for rand_b (2 dropped)
        h = f"{stamp | (random >> 68) << 64 | random & _RAND_B_MASK:032x}"
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


def uuid7(now_ms: int) -> str:
    """One new UUIDv7 text stamped ``now_ms``."""
    return uuid7s(1, now_ms)[0]
