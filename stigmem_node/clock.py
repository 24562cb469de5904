"""Time helpers.  Every component takes a ``Clock`` so that tests can move time."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    """Wall clock.  Subclass (or set ``offset_s``) to shift time in tests."""

    def __init__(self, offset_s: float = 0.0) -> None:
        self.offset_s = offset_s

    def time(self) -> float:
        return time.time() + self.offset_s

    def now_ms(self) -> int:
        return int(self.time() * 1000)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), tz=UTC)

    def now_iso(self) -> str:
        return iso(self.now())


def iso(dt: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z``; sorts as text (the year is zero-padded)."""
    dt = dt.astimezone(UTC)
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}"
            f"T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}.{dt.microsecond:06d}Z")


def iso_seconds(dt: datetime) -> str:
    """RFC 3339 UTC to the second (``2026-11-23T02:07:58Z``), the declaration form."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp with an explicit offset.  Raises ``ValueError``."""
    if not isinstance(text, str) or not (20 <= len(text) <= 40) or "T" not in text.upper():
        raise ValueError("not an RFC 3339 timestamp")
    value = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        raise ValueError("timestamp has no UTC offset")
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp out of range") from None
