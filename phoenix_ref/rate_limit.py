"""Fixed-window hit counters, kept in memory.

The QS limits federated messages per source domain, per client queue config
and per queue (``spec/queuing_service.md#rate-limiting``). A fan-out names
hundreds of configs and queues, so each message counts hundreds of hits;
this class counts them under one lock with dictionary operations only.

The counters are soft state (decision in ``docs/decisions.md``): a restart
starts every window afresh, which gives a sender at most one extra window's
allowance per restart, and restarts are not the sender's to cause. Memory
is bounded: counters of windows that have ended are dropped whenever the
number of keys passes ``max_keys``; if all of them are still live, the
oldest keys are dropped first.

Sans-IO: the caller passes the time.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable

__all__ = ["WindowCounters"]


class WindowCounters:
    """Counters of hits per key in fixed windows (``now_ms - now_ms % window_ms``)."""

    def __init__(self, max_keys: int = 1_000_000) -> None:
        self.max_keys = max_keys
        self._hits: dict[Hashable, tuple[int, int]] = {}   # key → (window end, hits in it)
        self._lock = threading.Lock()

    def hit_all(self, limits: Iterable[tuple[Hashable, int, int]], now_ms: int) -> tuple[Hashable, int] | None:
        """Count one hit for every ``(key, limit, window_ms)`` (a key named
        twice counts twice). Returns ``(key, window end in ms)`` for the first
        key whose count now exceeds its limit, else None. Every key is
        counted even when an earlier one is over its limit, so a refused
        sender cannot save allowance by being refused."""
        over = None
        with self._lock:
            hits = self._hits
            for key, limit, window_ms in limits:
                end = now_ms - now_ms % window_ms + window_ms
                old = hits.get(key)
                n = old[1] + 1 if old is not None and old[0] == end else 1
                hits[key] = (end, n)
                if n > limit and over is None:
                    over = (key, end)
            if len(hits) > self.max_keys:
                self._shrink(now_ms)
        return over

    def hits(self, key: Hashable, now_ms: int) -> int:
        """Hits counted for ``key`` in its current window (0 if none)."""
        with self._lock:
            entry = self._hits.get(key)
            return entry[1] if entry is not None and entry[0] > now_ms else 0

    def _shrink(self, now_ms: int) -> None:
        live = {k: v for k, v in self._hits.items() if v[0] > now_ms}
        if len(live) > self.max_keys:   # drop the keys first counted longest ago
            live = dict(list(live.items())[len(live) - self.max_keys:])
        self._hits = live

    def __len__(self) -> int:
        return len(self._hits)
