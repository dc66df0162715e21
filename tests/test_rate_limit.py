"""In-memory fixed-window counters of the QS federation rate limits."""

from __future__ import annotations

import threading

from phoenix_ref.rate_limit import WindowCounters
from phoenix_ref.spec_plugin import spec

RATE = "spec/queuing_service.md#rate-limiting"


@spec(RATE, "informative")
def test_fixed_windows_restart_at_the_window_boundary():
    c = WindowCounters()
    assert c.hit_all([("k", 2, 60_000)], 1_000) is None
    assert c.hit_all([("k", 2, 60_000)], 59_999) is None
    assert c.hit_all([("k", 2, 60_000)], 59_999) == ("k", 60_000)   # third hit in [0, 60 s)
    assert c.hits("k", 59_999) == 3
    assert c.hit_all([("k", 2, 60_000)], 60_000) is None              # a new window
    assert c.hits("k", 60_000) == 1
    assert c.hits("k", 120_000) == 0                                   # that window has ended too


@spec(RATE, "informative")
def test_every_key_is_counted_and_the_first_exceeded_one_is_reported():
    c = WindowCounters()
    limits = [(("domain", "x.example"), 100, 60_000), (("queue", b"a"), 1, 60_000), (("queue", b"b"), 5, 60_000)]
    assert c.hit_all(limits, 1_000) is None
    assert c.hit_all(limits, 2_000) == (("queue", b"a"), 60_000)
    assert c.hits(("queue", b"b"), 3_000) == 2          # counted although the message was refused
    assert c.hit_all([("q", 1, 10_000), ("q", 1, 10_000)], 0) == ("q", 10_000)   # a key named twice counts twice


@spec(RATE, "informative")
def test_memory_stays_bounded():
    c = WindowCounters(max_keys=100)
    for i in range(150):                 # a window that has ended is dropped first
        c.hit_all([(("old", i), 10, 1_000)], 500)
    for i in range(60):
        c.hit_all([(("new", i), 10, 1_000)], 1_500)
    assert len(c) <= 100
    assert c.hits(("new", 59), 1_500) == 1 and c.hits(("old", 0), 1_500) == 0
    for i in range(300):                 # all live: the keys counted first go first
        c.hit_all([(("live", i), 10, 60_000)], 2_000)
    assert len(c) <= 100
    assert c.hits(("live", 299), 2_000) == 1 and c.hits(("live", 0), 2_000) == 0


def test_concurrent_hits_are_all_counted():
    c = WindowCounters()

    def work():
        for _ in range(1000):
            c.hit_all([("shared", 10**9, 60_000)], 0)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.hits("shared", 0) == 4000
