"""The bounded LRU dictionary behind the QS's caches (phoenix_ref.lru)."""

import threading

from phoenix_ref.lru import BoundedLru


def test_least_recently_used_goes_first():
    lru: BoundedLru[str, int] = BoundedLru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1          # "a" is now the most recent
    lru.put("c", 3)
    assert lru.keys() == ["a", "c"] and lru.get("b") is None
    assert (lru.hits, lru.misses) == (1, 1)


def test_weights_bound_the_total_and_a_heavy_entry_is_not_kept():
    lru: BoundedLru[str, bytes] = BoundedLru(64)
    for i in range(5):
        lru.put(f"k{i}", bytes(26), 26)            # two fit in 64
    assert lru.keys() == ["k3", "k4"] and lru.weight == 52
    lru.put("big", bytes(65), 65)
    assert lru.get("big") is None and lru.keys() == ["k3", "k4"]


def test_put_replaces_and_reweighs():
    lru: BoundedLru[str, str] = BoundedLru(10)
    lru.put("a", "x", 4)
    lru.put("b", "y", 4)
    lru.put("a", "z", 6)                           # replaced: 6 + 4, nothing evicted
    assert lru.keys() == ["b", "a"] and lru.weight == 10 and lru.get("a") == "z"


def test_get_many_counts_and_refreshes_each_key():
    lru: BoundedLru[int, int] = BoundedLru(3)
    for k in (1, 2, 3):
        lru.put(k, k * 10)
    assert lru.get_many([1, 4, 2]) == [10, None, 20]
    assert (lru.hits, lru.misses) == (2, 1) and lru.keys() == [3, 1, 2]


def test_threads_keep_the_bound():
    lru: BoundedLru[int, int] = BoundedLru(100)

    def work(base: int) -> None:
        for i in range(2000):
            lru.put(base + i, i, 1 + i % 3)
            lru.get(base + i // 2)

    threads = [threading.Thread(target=work, args=(n * 10_000,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lru.weight <= 100 and lru.weight == sum(1 + v % 3 for v in (lru.get(k) for k in lru.keys()))
