"""A client's state directory: one SQLite file, ``<dir>/client.sqlite3``.

Tables (values are the encoded structs of :mod:`.saved`, or text):

``meta``
    ``account`` (a :class:`~.saved.SavedAccount`), ``settings`` (JSON: how
    to reach homeservers, short group names — whatever the caller keeps).
``contacts``
    user id → encoded ContactCard.
``key_packages``
    KeyPackageRef → :class:`~.saved.SavedKeyPackage` (published, not used up).
``groups``
    group id → :class:`~.saved.SavedMember`.
``connection_groups``
    group id → the user a connection group was created for (empty: by alias,
    not yet answered).
``connections``
    user id → the connection group shared with that contact, on either side
    of the connection (the reference for the contact's clients).
``texts``
    the message log: group id, position in the group's log, sender, body.
``waiting``
    dequeued messages waiting for a server they need, in order: position,
    since when (ms), the encoded MessageContent.

:meth:`ClientStore.write` replaces everything but the log and appends new
log entries, in one transaction: a crash leaves the state of the previous
write or of this one, never a mix. The directory is created mode 0700 and
the file mode 0600, since it holds the client's private keys
(docs/decisions.md, "Client state on disk").

One process at a time: a store holds an exclusive ``flock`` on the file
while open, so two commands on one state directory cannot overwrite each
other's keys; the second is refused with :class:`StateDirError`.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ClientStore", "StateDirError", "StateRows", "STATE_FILE"]

STATE_FILE = "client.sqlite3"
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS contacts (user_id TEXT PRIMARY KEY, card BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS key_packages (ref BLOB PRIMARY KEY, bundle BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS groups (group_id TEXT PRIMARY KEY, member BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS connection_groups (group_id TEXT PRIMARY KEY, user_id TEXT);
CREATE TABLE IF NOT EXISTS connections (user_id TEXT PRIMARY KEY, group_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS texts (group_id TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT,
                                  body BLOB NOT NULL, PRIMARY KEY (group_id, seq));
CREATE TABLE IF NOT EXISTS waiting (position INTEGER PRIMARY KEY, since_ms INTEGER NOT NULL,
                                    message BLOB NOT NULL);
"""


class StateDirError(Exception):
    """The directory holds no client state, or already holds one, or a
    state this code cannot read."""


@dataclass
class StateRows:
    """Everything a write replaces (already encoded), plus new log entries."""
    account: bytes
    contacts: dict[str, bytes] = field(default_factory=dict)
    key_packages: dict[bytes, bytes] = field(default_factory=dict)
    groups: dict[str, bytes] = field(default_factory=dict)
    connection_groups: dict[str, str | None] = field(default_factory=dict)
    connections: dict[str, str] = field(default_factory=dict)
    #: (group id, position, sender or None, body)
    new_texts: list[tuple[str, int, str | None, bytes]] = field(default_factory=list)
    #: (since ms, encoded MessageContent), in order
    waiting: list[tuple[int, bytes]] = field(default_factory=list)


class ClientStore:
    """The SQLite file of one client (see the module docstring)."""

    def __init__(self, path: Path, db: sqlite3.Connection):
        self.path = path
        self._db = db
        self._lock = _lock(path)

    @classmethod
    def create(cls, state_dir: Path | str) -> "ClientStore":
        """A new, empty state in ``state_dir`` (created if missing); refuses
        a directory that already holds a client."""
        state_dir = Path(state_dir)
        path = state_dir / STATE_FILE
        if path.exists():
            raise StateDirError(f"{state_dir} already holds a client's state ({STATE_FILE})")
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        db = cls._connect(path)
        with db:
            db.executescript(SCHEMA)
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION).encode(),))
        return cls(path, db)

    @classmethod
    def open(cls, state_dir: Path | str) -> "ClientStore":
        """The state in ``state_dir``; StateDirError if there is none."""
        state_dir = Path(state_dir)
        path = state_dir / STATE_FILE
        if not path.is_file():
            raise StateDirError(f"{state_dir} holds no client state (no {STATE_FILE}); "
                                f"create one with `register`")
        try:
            db = cls._connect(path)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.DatabaseError as e:
            raise StateDirError(f"{path} is not a client state file ({e})") from None
        if row is None or row[0] is None or bytes(row[0]).decode() != str(SCHEMA_VERSION):
            db.close()
            raise StateDirError(f"{path} has another state format than this client reads ({SCHEMA_VERSION})")
        try:
            store = cls(path, db)
        except StateDirError:
            db.close()
            raise
        db.executescript(SCHEMA)      # tables added since the file was made (all CREATE IF NOT EXISTS)
        return store

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None)   # transactions are explicit
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def close(self) -> None:
        self._db.close()
        os.close(self._lock)

    # --- reading ----------------------------------------------------------------------------

    def _meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def account(self) -> bytes:
        data = self._meta("account")
        if data is None:
            raise StateDirError(f"{self.path} holds no account yet (registration did not finish)")
        return data

    def rows(self, table: str) -> list[tuple]:
        if table not in ("contacts", "key_packages", "groups", "connection_groups", "connections"):
            raise ValueError(table)
        return self._db.execute(f"SELECT * FROM {table}").fetchall()

    def texts(self) -> list[tuple[str, int, str | None, bytes]]:
        return [(g, s, sender, bytes(b)) for g, s, sender, b in
                self._db.execute("SELECT group_id, seq, sender, body FROM texts ORDER BY group_id, seq")]

    def waiting(self) -> list[tuple[int, bytes]]:
        return [(since, bytes(m)) for since, m in
                self._db.execute("SELECT since_ms, message FROM waiting ORDER BY position")]

    def settings(self) -> dict[str, Any]:
        data = self._meta("settings")
        return json.loads(data) if data else {}

    # --- writing ----------------------------------------------------------------------------

    def set_settings(self, settings: dict[str, Any]) -> None:
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('settings', ?)",
                             (json.dumps(settings, sort_keys=True).encode(),))

    def write(self, rows: StateRows) -> None:
        """Replace the state by ``rows`` and append the new log entries, atomically."""
        with self._transaction():
            db = self._db
            db.execute("INSERT OR REPLACE INTO meta VALUES ('account', ?)", (rows.account,))
            for table, key, value, items in (("contacts", "user_id", "card", rows.contacts),
                                             ("key_packages", "ref", "bundle", rows.key_packages),
                                             ("groups", "group_id", "member", rows.groups),
                                             ("connection_groups", "group_id", "user_id", rows.connection_groups),
                                             ("connections", "user_id", "group_id", rows.connections)):
                db.execute(f"DELETE FROM {table}")
                db.executemany(f"INSERT INTO {table} ({key}, {value}) VALUES (?, ?)", list(items.items()))
            db.executemany("INSERT OR REPLACE INTO texts VALUES (?, ?, ?, ?)", rows.new_texts)
            db.execute("DELETE FROM waiting")
            db.executemany("INSERT INTO waiting VALUES (?, ?, ?)",
                           [(i, since, m) for i, (since, m) in enumerate(rows.waiting)])

    class _Tx:
        def __init__(self, db: sqlite3.Connection):
            self.db = db

        def __enter__(self) -> None:
            self.db.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type, *_: Any) -> None:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _transaction(self) -> "_Tx":
        return self._Tx(self._db)


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirError(f"{path.parent} is in use by another client process (e.g. `listen`); "
                            f"stop it first") from None
    return fd
