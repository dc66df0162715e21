"""The embedded storage every service store builds on (GUIDE §4).

One stdlib ``sqlite3`` database file per service in the homeserver's data
directory, WAL journal, one transaction per request. ``sqlite3`` blocks, so
every call runs in a worker thread (``trio.to_thread.run_sync``); a lock
serialises use of the one connection. A service store subclasses
:class:`SqliteStore`, declares its ``SCHEMA`` and writes synchronous methods
that take the connection; async callers use :meth:`SqliteStore.run`.

The narrow per-service interfaces keep cores independent of SQLite, so a
PostgreSQL store can be added without touching them.

Several stores of one service may share one connection (the QS's records,
queues and outbound queues, :mod:`phoenix_ref.queuing.store`) so that one
request's writes to all of them commit together; :func:`transaction` nests
for that purpose (a nested unit joins the transaction that is open).
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Callable, Generic, Hashable, Iterator, Sequence, TypeVar

import trio

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Host parameters per statement: a store that binds one parameter per row
#: (``IN (…)``, multi-row ``VALUES``) splits its rows into statements of at
#: most this many (SQLite allows 32766 since 3.32; older builds 999).
MAX_SQL_PARAMS = 500


def chunks(items: Sequence[T], params_per_item: int = 1) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most :data:`MAX_SQL_PARAMS`
    parameters, when each item binds ``params_per_item`` of them."""
    size = max(1, MAX_SQL_PARAMS // params_per_item)
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Connection(sqlite3.Connection):
    """An ``sqlite3`` connection that tells listeners when a unit of work is
    rolled back, so that a store can drop in-memory copies of rows that
    were written inside it (:class:`~phoenix_ref.queues.SqliteQueueStore`
    keeps the key material of busy queues), and counts the transactions
    :func:`transaction` committed (``commits``: each is a write to disk,
    the cost the spec's IO goal counts; tests and benchmarks read it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rollback_listeners: list[Callable[[], None]] = []
        self.commits = 0

    def rolled_back(self) -> None:
        for listener in self.rollback_listeners:
            listener()


#: Page size of the database files :func:`open_connection` creates (a file
#: keeps the size it was created with).
PAGE_SIZE = 16384

#: How long a connection waits for another connection's write lock (or, in
#: a checkpoint, for its readers) before it gives up with "database is
#: locked". Two processes use one database when an operator runs
#: ``phoenix-ref admin`` beside ``phoenix-ref serve``; every transaction of
#: either is short, so a few seconds are plenty.
BUSY_TIMEOUT_S = 10.0


def open_connection(path: Path | str) -> Connection:
    """An SQLite connection as every store uses it: autocommit mode (the
    stores issue ``BEGIN`` themselves), WAL journal, foreign keys on,
    deleted content overwritten with zeros (``secure_delete``), a busy
    timeout of :data:`BUSY_TIMEOUT_S`, usable from worker threads (callers
    serialise use with a lock).

    ``secure_delete``: spec/threat_model/stride/security_requirements.md#metadata-minimalism
    asks that what is no longer needed be deleted at once; without it SQLite
    only marks deleted rows free and their bytes stay readable in the file
    until the space is reused (decision: deletion really deletes; the WAL
    side is :func:`purge_deleted`).

    A new file gets pages of :data:`PAGE_SIZE` bytes instead of SQLite's
    4 KiB: a fan-out dirties pages all over the message index, and with
    larger pages its commit writes fewer, larger WAL frames, each a system
    call or two (decision: QS queue storage layout)."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, factory=Connection,
                           timeout=BUSY_TIMEOUT_S)
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")   # no effect on a file that exists
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA secure_delete=ON")
    return conn


def purge_deleted(conn: sqlite3.Connection, lock) -> bool:
    """After personal data was deleted and committed: copy the write-ahead
    log into the database file and truncate the log to zero bytes
    (``PRAGMA wal_checkpoint(TRUNCATE)``), so the old versions of the
    deleted rows, which the log still holds, are gone from the files too.

    Waits (up to the busy timeout) for readers of other connections, e.g. a
    running homeserver beside ``phoenix-ref admin``. Returns whether the
    checkpoint completed; if another connection kept reading past the
    timeout it did not, and the next one (or SQLite's automatic checkpoint)
    finishes the work. Must not be called inside a transaction."""
    with lock:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return busy == 0


class RowCache(Generic[K, V]):
    """In-memory copies of rows a store read or wrote, for a store that keeps
    them current in the same unit of work as every change it makes
    (write-through).

    Bounded by ``max_entries`` (the oldest entry is dropped first) and
    emptied whenever a unit of work on ``conn`` rolls back, so it never holds
    what was not committed. Another process may write the same database
    (``phoenix-ref admin`` deleting a user beside a running homeserver):
    every lookup first asks SQLite whether another connection committed
    since the last one (``PRAGMA data_version``, one cheap statement) and,
    if so, empties the cache. A connection that is not a
    :class:`Connection` cannot report rollbacks: the cache then keeps
    nothing. Not locked: the store calls it under the lock it holds for the
    connection.
    """

    def __init__(self, conn: sqlite3.Connection, max_entries: int):
        self._entries: dict[K, V] = {}
        self._conn = conn
        self.max_entries = max_entries if isinstance(conn, Connection) else 0
        self._data_version = self._read_data_version()
        if self.max_entries:
            conn.rollback_listeners.append(self._entries.clear)

    def _read_data_version(self) -> int | None:
        return self._conn.execute("PRAGMA data_version").fetchone()[0] if self.max_entries else None

    def _forget_if_others_wrote(self) -> None:
        if not self.max_entries:
            return
        version = self._read_data_version()
        if version != self._data_version:
            self._entries.clear()
            self._data_version = version

    def get(self, key: K) -> V | None:
        self._forget_if_others_wrote()
        return self._entries.get(key)

    def lookup(self, keys: list[K]) -> tuple[dict[K, V], list[K]]:
        """``(cached entries by key, keys not cached)`` for ``keys``."""
        self._forget_if_others_wrote()
        found: dict[K, V] = {}
        missing: list[K] = []
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                missing.append(key)
            else:
                found[key] = entry
        return found, missing

    def put(self, key: K, value: V) -> None:
        entries = self._entries
        if key not in entries and len(entries) >= self.max_entries:
            if not self.max_entries:
                return
            del entries[next(iter(entries))]
        entries[key] = value

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


def _rolled_back(conn: sqlite3.Connection) -> None:
    if isinstance(conn, Connection):
        conn.rolled_back()


#: ``id()`` of each connection whose open transaction had a nested unit fail
#: after it changed rows (see :func:`transaction`); an entry lives only while
#: that transaction is open.
_failed: set[int] = set()


class NestedUnitFailed(RuntimeError):
    """A unit of work tried to commit after a unit nested in it had failed."""


@contextmanager
def transaction(conn: sqlite3.Connection, lock) -> Iterator[sqlite3.Connection]:
    """One atomic unit of work on a connection that several stores may share.

    The outermost unit is ``BEGIN IMMEDIATE`` … ``COMMIT``; an exception
    (a failing ``COMMIT`` too) rolls it back, tells the connection's
    rollback listeners (:class:`Connection`) and propagates. A unit opened
    inside it (same thread, ``lock`` is re-entrant) joins that transaction,
    so all of it commits or none of it does. A nested unit that fails tells
    the rollback listeners too (caches may hold what it wrote); if it had
    changed rows by then, the transaction is lost even when a caller handles
    the exception: the outermost unit rolls back when it ends and raises
    :class:`NestedUnitFailed`, since part of the failed unit's rows may
    stand. A nested unit that fails before changing anything (a lookup that
    finds nothing, a check that refuses) leaves the transaction usable.

    A nested unit is not an SQL ``SAVEPOINT``, on purpose: inside one,
    SQLite copies every page a write touches into a sub-journal first (a
    temporary file once past 64 KiB), which cost a fan-out several percent
    of its CPU (``docs/decisions.md``, QS queue storage layout).
    """
    with lock:
        if conn.in_transaction:
            changes = conn.total_changes
            try:
                yield conn
            except BaseException:
                if conn.total_changes != changes:
                    _failed.add(id(conn))
                _rolled_back(conn)
                raise
            return
        _failed.discard(id(conn))   # left by a transaction opened outside this function, if any
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            if id(conn) in _failed:
                raise NestedUnitFailed("a unit of work nested in this one failed; nothing was committed")
            conn.execute("COMMIT")
            if isinstance(conn, Connection):
                conn.commits += 1
        except BaseException:
            if conn.in_transaction:   # SQLite may have rolled back already
                conn.execute("ROLLBACK")
            _rolled_back(conn)
            raise
        finally:
            _failed.discard(id(conn))


class SqliteStore:
    """An SQLite database file with a schema; subclasses set ``SCHEMA``.

    One connection (:func:`open_connection`) and one re-entrant lock per
    service database: a store that keeps several kinds of rows in the file
    hands ``conn`` and ``lock`` to its parts, so that their units of work
    join :meth:`transaction` and one request's writes commit together."""

    SCHEMA = ""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.conn = open_connection(self.path)
        with self.lock:
            self.conn.executescript(self.SCHEMA)

    @classmethod
    async def open(cls, path: Path | str):
        """Open (and create if needed) off the Trio thread."""
        return await trio.to_thread.run_sync(cls, path)

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One unit of work on this database (:func:`transaction`)."""
        return transaction(self.conn, self.lock)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one transaction, in a worker thread."""
        def work() -> T:
            with self.transaction() as conn:
                return fn(conn)
        return await trio.to_thread.run_sync(work)
