"""The nonces this node puts in the tokens it mints: time-ordered, so that they are cheap to keep.

A nonce only has to be unique: the token's signature, not the nonce's secrecy, is what
stops a forger.  A serving node keeps every nonce it accepts in a B-tree keyed by the nonce
text (``nonce_cache``); random keys (UUID4) land on a random page each, so every accepted
token dirties and writes one page of its own.  The nonces minted here are UUIDs of version 7
(RFC 9562): the first 48 bits are the token's ``iat`` in epoch milliseconds, the other 74
variable bits are random.  Consecutive tokens sort next to each other, and the nonces of a
busy subscriber's tokens fill pages one after another.  Uniqueness is unchanged in practice:
74 random bits within one millisecond of one issuer.

A serving node accepts any nonce (at most 128 characters, no NUL); peers that send UUID4
nonces, as the reference node does, are served the same way.
"""

from __future__ import annotations

import os
import uuid

__all__ = ["new_nonce"]

_MS_MASK = (1 << 48) - 1


def new_nonce(now_ms: int) -> str:
    """A fresh UUIDv7 text whose timestamp is ``now_ms`` (taken modulo 2^48)."""
    random = int.from_bytes(os.urandom(10), "big")  # 80 bits: 12 for rand_a, 62 for rand_b
    rand_a, rand_b = random >> 68, random & ((1 << 62) - 1)
    value = (now_ms & _MS_MASK) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))
