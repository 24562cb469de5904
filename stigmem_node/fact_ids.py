"""New local fact ids: random UUID4 texts, made in bulk from one read of the random source."""

from __future__ import annotations

import os
from typing import Final

__all__ = ["new_fact_id", "new_fact_ids"]

_UUID4_CLEAR: Final = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET: Final = (4 << 76) | (0x8000 << 48)


def new_fact_id() -> str:
    """A new local fact's id: a random UUID4 (RFC 9562: version 4, variant 10), in its
    hyphenated lowercase form; what ``str(uuid.uuid4())`` gives, without the object."""
    return new_fact_ids(1)[0]


def new_fact_ids(n: int) -> list[str]:
    """``n`` new fact ids (``new_fact_id``) from one read of the system's random source."""
    raw = os.urandom(16 * n)
    out = []
    for i in range(0, 16 * n, 16):
        h = f"{int.from_bytes(raw[i:i + 16]) & _UUID4_CLEAR | _UUID4_SET:032x}"
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out
