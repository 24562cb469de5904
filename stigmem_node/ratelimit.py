"""Per-client failure limiter: after too many failures in a window, refuse for a while."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass


class FailureLimiter:
    """Sliding window of failures per key (client address), bounded in memory."""

    def __init__(self, max_failures: int = 10, window_s: float = 60.0, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_keys = max_keys
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _live(self, key: str, now: float) -> deque[float] | None:
        q = self._failures.get(key)
        if q is None:
            return None
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._failures[key]
            return None
        return q

    def retry_after(self, key: str) -> int | None:
        """Seconds to wait if ``key`` is over the limit, else None."""
        now = self.clock()
        q = self._live(key, now)
        if q is None or len(q) < self.max_failures:
            return None
        return max(1, math.ceil(q[-self.max_failures] + self.window_s - now))

    def fail(self, key: str) -> None:
        now = self.clock()
        q = self._live(key, now)
        if q is None:
            q = self._failures[key] = deque(maxlen=self.max_failures * 2)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        q.append(now)


@dataclass(slots=True)
class _Window:
    start: float
    used: int = 1
    suppressed: int = 0


class AuditBudget:
    """At most ``per_window`` audit rows per key (client address) per window.

    Rows over the budget are not written but counted; the next row that is written for
    that key carries the count, so nothing is lost silently and nobody can flood the trail.
    """

    def __init__(self, per_window: int = 20, window_s: float = 60.0, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self.max_keys = max_keys
        self.clock = clock
        self._state: OrderedDict[str, _Window] = OrderedDict()

    def take(self, key: str) -> int | None:
        """None if this row must be suppressed, else how many were suppressed before it."""
        now = self.clock()
        state = self._state.get(key)
        if state is None or now - state.start >= self.window_s:
            suppressed = state.suppressed if state else 0
            self._state[key] = _Window(now)
            self._state.move_to_end(key)
            while len(self._state) > self.max_keys:
                self._state.popitem(last=False)
            return suppressed
        if state.used < self.per_window:
            state.used += 1
            suppressed, state.suppressed = state.suppressed, 0
            return suppressed
        state.suppressed += 1
        return None

    def carry(self, key: str, suppressed: int) -> None:
        """Put back a count that ``take`` handed out for a row that was not written after all."""
        state = self._state.get(key)
        if state is not None and suppressed:
            state.suppressed += suppressed


class UnauthenticatedAuditGate:
    """The audit budgets shared by every row that traffic without a valid credential can cause.

    One per node.  A row is written only if both its per-address budget (per family of
    rows: token rejections, throttling notices, key refreshes) and the global budget for
    all addresses and families together have room in the current window.  A row that is
    not written is counted, and the next row that is written carries the counts in its
    ``detail``: ``suppressed_before`` (same family and address) and ``suppressed_all_before``
    (everything the global budget held back).  So the rows such traffic adds per window
    are bounded by ``global_per_window`` whatever the number of addresses, and nothing
    disappears silently.
    """

    FAMILIES = ("token", "throttle", "refresh")

    def __init__(self, per_address: int = 20, global_per_window: int = 600, window_s: float = 60.0,
                 max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.per_address = AuditBudget(per_address, window_s, max_keys, clock=lambda: self.clock())
        self.everyone = AuditBudget(global_per_window, window_s, 1, clock=lambda: self.clock())

    @property
    def window_s(self) -> float:
        return self.everyone.window_s

    def admit(self, family: str, key: str) -> dict[str, int] | None:
        """None if the row must be suppressed (it is counted), else what to add to its detail."""
        if family not in self.FAMILIES:
            raise ValueError(f"unknown audit family {family!r}")
        budget_key = f"{family} {key}"
        own = self.per_address.take(budget_key)
        if own is None:
            return None
        everyone = self.everyone.take("*")
        if everyone is None:
            self.per_address.carry(budget_key, own)  # reported with this address's next written row
            return None
        extra: dict[str, int] = {}
        if own:
            extra["suppressed_before"] = own
        if everyone:
            extra["suppressed_all_before"] = everyone
        return extra
