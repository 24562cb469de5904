"""The hybrid logical clock (HLC) that stamps facts.

``"<wall ms, 13 digits>.<counter, 3 digits>"`` (``"1795399679090.007"``), so text order is
causal order.  The reference node parses any ``int.int`` form and writes an unpadded
counter (``"1795399679090.7"``); we read both.  A counter that would pass 999 carries into
the wall (+1 ms, counter 0), so the width never grows.

Pure: the clock is injected.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Final

from stigmem_node.clock import Clock
from stigmem_node.errors import ValidationError

__all__ = ["HLC", "HLC_MAX_FUTURE_MS", "format_hlc", "parse_hlc"]

HLC_WALL_DIGITS: Final = 13
HLC_COUNTER_DIGITS: Final = 3
HLC_COUNTER_MAX: Final = 10**HLC_COUNTER_DIGITS - 1
HLC_MAX_FUTURE_MS: Final = 300_000  # the reference's default bound
_HLC_RE: Final = re.compile(r"([0-9]{1,13})(?:\.([0-9]{1,18}))?")


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


_WALL_END = 10**HLC_WALL_DIGITS
_HLC_TEXT = f"{{:0{HLC_WALL_DIGITS}d}}.{{:0{HLC_COUNTER_DIGITS}d}}".format


def format_hlc(wall: int, counter: int) -> str:
    """Fixed-width text (13-digit wall, 3-digit counter) so that text order is causal order."""
    wall, counter = _carry(wall, counter)
    if not 0 <= wall < _WALL_END or counter < 0:
        raise ValueError("HLC out of range")
    return _HLC_TEXT(wall, counter)


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
        return self.ticks(1)[0]

    def ticks(self, n: int) -> list[str]:
        """``n`` successive ``tick()``s, in order, for one reading of the wall clock (a
        batch's facts)."""
        now = self._clock.now_ms()
        stamps = []
        with self._lock:
            wall, counter = self._wall, self._counter
            for _ in range(n):
                if now > wall:
                    wall, counter = now, 0
                else:
                    wall, counter = _carry(wall, counter + 1)
                stamps.append(format_hlc(wall, counter))
            self._wall, self._counter = wall, counter
        return stamps

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
