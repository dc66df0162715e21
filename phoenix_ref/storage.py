"""The embedded storage every service store builds on (GUIDE §4).

One stdlib ``sqlite3`` database file per service in the homeserver's data
directory, WAL journal, one transaction per request. ``sqlite3`` blocks, so
every call runs in a worker thread (``trio.to_thread.run_sync``); a lock
serialises use of the one connection. A service store subclasses
:class:`SqliteStore`, declares its ``SCHEMA`` and writes synchronous methods
that take the connection; async callers use :meth:`SqliteStore.run`.

The narrow per-service interfaces keep cores independent of SQLite, so a
PostgreSQL store can be added without touching them.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import trio

T = TypeVar("T")


class SqliteStore:
    """An SQLite database file with a schema; subclasses set ``SCHEMA``."""

    SCHEMA = ""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        with self.lock:
            self.conn.executescript(self.SCHEMA)

    @classmethod
    async def open(cls, path: Path | str):
        """Open (and create if needed) off the Trio thread."""
        return await trio.to_thread.run_sync(cls, path)

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error), under the lock."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one transaction, in a worker thread."""
        def work() -> T:
            with self.transaction() as conn:
                return fn(conn)
        return await trio.to_thread.run_sync(work)
