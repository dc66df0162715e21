"""A bounded, thread-safe least-recently-used dictionary.

The QS keeps what it computed for repeated inputs of a busy group
(``spec/performance_goals.md``, homeserver computational overhead): opened
sealed queue configs by their digest, decoded config lists by their bytes,
encoded config lists by their items (:mod:`phoenix_ref.queuing.fanout`).
Each of those caches is one :class:`BoundedLru`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

__all__ = ["BoundedLru"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedLru(Generic[K, V]):
    """Entries weighing at most ``max_weight`` in all (each weighs what its
    :meth:`put` says, one by default); the least recently used go first.
    An entry heavier than the whole bound is not kept. Thread-safe: QS cores
    run in worker threads. ``hits``/``misses`` count lookups (tests, metrics).
    """

    def __init__(self, max_weight: int):
        self.max_weight = max_weight
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        return self.get_many([key])[0]

    def get_many(self, keys: list[K]) -> list[V | None]:
        """The value of each key, or None; under one lock."""
        with self._lock:
            entries = self._entries
            out: list[V | None] = []
            for key in keys:
                entry = entries.get(key)
                if entry is None:
                    out.append(None)
                else:
                    entries.move_to_end(key)
                    out.append(entry[0])
            found = len(out) - out.count(None)
            self.hits += found
            self.misses += len(out) - found
            return out

    def put(self, key: K, value: V, weight: int = 1) -> None:
        if weight > self.max_weight:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._weight -= old[1]
            self._entries[key] = (value, weight)
            self._weight += weight
            while self._weight > self.max_weight:
                self._weight -= self._entries.popitem(last=False)[1][1]

    @property
    def weight(self) -> int:
        return self._weight

    def keys(self) -> list[K]:
        """The keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
