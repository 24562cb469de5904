"""Per-client failure limiter: after too many failures in a window, refuse for a while."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from typing import Callable


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
