"""storage.py: nested units of work, rollback listeners and the row cache."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from phoenix_ref.storage import RowCache, open_connection, transaction


def test_row_cache_is_bounded_and_emptied_by_any_rollback(tmp_path):
    conn, lock = open_connection(tmp_path / "s.db"), threading.RLock()
    cache: RowCache[str, int] = RowCache(conn, 2)
    for i, key in enumerate("abc"):
        cache.put(key, i)
    assert cache.lookup(["a", "b", "c"]) == ({"b": 1, "c": 2}, ["a"])   # the oldest went first
    with pytest.raises(RuntimeError):
        with transaction(conn, lock):
            with transaction(conn, lock):                  # a savepoint rolled back alone
                raise RuntimeError("inner unit fails")
    assert len(cache) == 0
    cache.put("d", 3)
    with pytest.raises(sqlite3.OperationalError):
        with transaction(conn, lock):
            conn.execute("SELECT * FROM no_such_table")
    assert cache.get("d") is None
    conn.close()


def test_row_cache_keeps_nothing_on_a_connection_that_cannot_report_rollbacks(tmp_path):
    conn = sqlite3.connect(tmp_path / "plain.db")
    cache: RowCache[str, int] = RowCache(conn, 10)
    cache.put("a", 1)
    assert cache.get("a") is None and len(cache) == 0
    conn.close()
