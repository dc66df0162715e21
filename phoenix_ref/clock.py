"""Injectable wall clock in milliseconds since the Unix epoch (GUIDE §4).

Cores never read the time themselves; they get it from a ``Clock``. Tests use
``FixedClock`` to move time by hand (token ages, expiry, inactivity), and
``trio.testing.MockClock`` for sleeps.
"""

from __future__ import annotations

import time


class Clock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class FixedClock(Clock):
    def __init__(self, now_ms: int = 1_767_225_600_000):  # 2026-01-01T00:00:00Z
        self.t = now_ms

    def now_ms(self) -> int:
        return self.t

    def advance(self, ms: int) -> None:
        self.t += ms
