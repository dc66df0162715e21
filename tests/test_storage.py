"""storage.py: nested units of work, rollback listeners and the row cache."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from phoenix_ref.storage import (
    PAGE_SIZE, Connection, NestedUnitFailed, RowCache, SqliteStore, open_connection, transaction,
)


def test_row_cache_is_bounded_and_emptied_by_any_rollback(tmp_path):
    conn, lock = open_connection(tmp_path / "s.db"), threading.RLock()
    cache: RowCache[str, int] = RowCache(conn, 2)
    for i, key in enumerate("abc"):
        cache.put(key, i)
    assert cache.lookup(["a", "b", "c"]) == ({"b": 1, "c": 2}, ["a"])   # the oldest went first
    with pytest.raises(RuntimeError):
        with transaction(conn, lock):
            with transaction(conn, lock):                  # a nested unit fails
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


def _rows(conn) -> list[int]:
    return [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")]


@pytest.fixture
def table(tmp_path):
    conn, lock = open_connection(tmp_path / "n.db"), threading.RLock()
    conn.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)")
    yield conn, lock
    conn.close()


def test_a_nested_unit_joins_the_open_transaction(table):
    conn, lock = table
    with transaction(conn, lock):
        conn.execute("INSERT INTO t VALUES (1)")
        with transaction(conn, lock):
            conn.execute("INSERT INTO t VALUES (2)")
        assert conn.in_transaction   # the nested unit committed nothing by itself
    assert _rows(conn) == [1, 2]
    with pytest.raises(RuntimeError):
        with transaction(conn, lock):
            with transaction(conn, lock):
                conn.execute("INSERT INTO t VALUES (3)")
            raise RuntimeError("outer unit fails after the nested one ended")
    assert _rows(conn) == [1, 2]   # the nested unit's row went with the outer unit


def test_a_nested_unit_that_fails_after_writing_loses_the_whole_transaction(table):
    conn, lock = table
    with pytest.raises(NestedUnitFailed):
        with transaction(conn, lock):
            conn.execute("INSERT INTO t VALUES (1)")
            try:
                with transaction(conn, lock):
                    conn.execute("INSERT INTO t VALUES (2)")
                    raise RuntimeError("inner unit fails after a write")
            except RuntimeError:
                pass   # handled, yet the inner unit's row may stand: nothing may commit
            conn.execute("INSERT INTO t VALUES (3)")
    assert _rows(conn) == [] and not conn.in_transaction
    with transaction(conn, lock):   # the connection is usable again, with no failure left over
        conn.execute("INSERT INTO t VALUES (4)")
    assert _rows(conn) == [4]


def test_a_multi_row_statement_that_fails_midway_commits_none_of_its_rows(table):
    """The stores' fan-out writes are ``INSERT OR FAIL`` (no statement
    journal): rows before the failing one stay in the statement, and it is
    the unit of work that undoes them."""
    conn, lock = table
    with pytest.raises(sqlite3.IntegrityError):
        with transaction(conn, lock):
            with transaction(conn, lock):
                conn.execute("INSERT OR FAIL INTO t VALUES (1), (2), (2), (3)")
    assert _rows(conn) == []


def test_a_nested_unit_that_fails_before_writing_leaves_the_transaction_usable(table):
    conn, lock = table
    cache: RowCache[str, int] = RowCache(conn, 10)
    with transaction(conn, lock):
        conn.execute("INSERT INTO t VALUES (1)")
        cache.put("a", 1)
        with pytest.raises(LookupError):
            with transaction(conn, lock):
                conn.execute("SELECT v FROM t WHERE v = 9").fetchall()
                raise LookupError("nothing found")
        assert len(cache) == 0   # a failed unit empties the caches all the same
        conn.execute("INSERT INTO t VALUES (2)")
    assert _rows(conn) == [1, 2]


def test_new_files_get_large_pages_and_old_files_keep_theirs(tmp_path):
    conn = open_connection(tmp_path / "new.db")
    conn.execute("CREATE TABLE t (v)")
    assert conn.execute("PRAGMA page_size").fetchone() == (PAGE_SIZE,) and PAGE_SIZE > 4096
    conn.close()
    old = sqlite3.connect(tmp_path / "old.db")
    old.execute("CREATE TABLE t (v)")
    old.execute("INSERT INTO t VALUES (1)")
    old.commit()
    old.close()
    conn = open_connection(tmp_path / "old.db")
    assert conn.execute("PRAGMA page_size").fetchone() == (4096,)
    assert conn.execute("SELECT v FROM t").fetchall() == [(1,)]
    conn.close()


class _Store(SqliteStore):
    SCHEMA = "CREATE TABLE IF NOT EXISTS t (v INTEGER PRIMARY KEY);"


def test_a_sqlite_store_uses_the_one_transaction_helper(tmp_path):
    """SqliteStore opens its file like every store (WAL, foreign keys, large
    pages) and its transaction() is :func:`transaction`: a part that shares
    its connection joins the open unit, and a failing part loses it all."""
    store = _Store(tmp_path / "s.db")
    try:
        assert isinstance(store.conn, Connection)
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        with pytest.raises(NestedUnitFailed):
            with store.transaction():
                store.conn.execute("INSERT INTO t VALUES (1)")
                with pytest.raises(RuntimeError):
                    with transaction(store.conn, store.lock):   # a part of the store, same connection
                        store.conn.execute("INSERT INTO t VALUES (2)")
                        raise RuntimeError("the part fails after writing")
        assert _rows(store.conn) == []
        with store.transaction():
            store.conn.execute("INSERT INTO t VALUES (3)")
            with transaction(store.conn, store.lock):
                store.conn.execute("INSERT INTO t VALUES (4)")
        assert _rows(store.conn) == [3, 4]
    finally:
        store.close()


def test_row_cache_forgets_what_another_connection_may_have_changed(tmp_path):
    """``phoenix-ref admin`` writes the database beside a running homeserver:
    a commit by another connection empties the cache before its next lookup."""
    conn, other = open_connection(tmp_path / "s.db"), open_connection(tmp_path / "s.db")
    conn.execute("CREATE TABLE t (v INTEGER)")
    cache: RowCache[str, int] = RowCache(conn, 10)
    cache.put("a", 1)
    conn.execute("INSERT INTO t VALUES (1)")          # this connection's own writes keep the cache
    assert cache.get("a") == 1
    other.execute("INSERT INTO t VALUES (2)")         # another's commit does not
    assert cache.lookup(["a"]) == ({}, ["a"])
    cache.put("a", 2)
    assert cache.get("a") == 2
    conn.close()
    other.close()


def test_every_connection_overwrites_deleted_content(tmp_path):
    conn = open_connection(tmp_path / "s.db")
    assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
    conn.close()
