"""What the AS keeps (``spec/authentication_service.md#as-state``): the storage
interface of the AS core and its SQLite implementation.

Everything in the spec's list survives a restart — user entries (OPAQUE
record, encrypted profile), client entries (credential, connection packages,
direct queue), alias entries (auth key, direct queue, connection package
payloads) — except the *ephemeral OPAQUE DB*, which the spec puts in memory
(:mod:`phoenix_ref.opaque`). Token issuance records are the allowance
counters of :mod:`phoenix_ref.privacy_pass_store`.

The interface is narrow and speaks bytes and ids, so that another database
(PostgreSQL) can implement it without touching the core. Every method is one
transaction. Identifiers are stored as their canonical wire encoding (the
codec guarantees equal ids encode equally, ``phoenix_ref/ids.py``); structs
such as credentials and connection packages are stored encoded, exactly as
they arrived, and are decoded by the core.

Direct queues (user and alias) are kept by :mod:`phoenix_ref.queues` (queue
encryption and dequeue semantics shared with the QS) in the same database,
over the same connection: :func:`open_as_storage` opens both, and
:meth:`SqliteAccountStore.transaction` makes writes to both one unit. :func:`direct_queue_id` names the
queue of a client (``b"c" || ClientId``) or of an alias (``b"a" || Alias``).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from ..codec import decode, encode
from ..errors import Conflict, NotFound
from ..ids import Alias, ClientId, UserId
from ..opaque import OpaqueServerSetup
from ..queues import TimePrecision, QueueConfig, Queues, SqliteQueueStore
from ..storage import open_connection, purge_deleted, transaction

__all__ = [
    "UserEntry", "ClientEntry", "AliasEntry", "QueueOwner", "AccountStore",
    "SqliteAccountStore", "direct_queue_id", "delete_user_entirely", "open_as_storage",
]


#: SQLite INTEGER is signed 64-bit; a package's ``not_after`` is a client's u64.
_SQLITE_MAX = (1 << 63) - 1


@dataclasses.dataclass(frozen=True)
class UserEntry:
    """``#as-state`` user entry (its client entries are stored separately)."""
    user_id: UserId
    opaque_record: bytes
    encrypted_user_profile: bytes


@dataclasses.dataclass(frozen=True)
class ClientEntry:
    """``#as-state`` client entry: the encoded ClientCredential of the client
    and the end of its validity (``expiration_data.not_after``, ms), after
    which the entry is deleted (``state_expiration.md#expiration-of-clients``)."""
    client_id: ClientId
    client_credential: bytes
    not_after_ms: int = _SQLITE_MAX


@dataclasses.dataclass(frozen=True)
class AliasEntry:
    """``#as-state`` alias entry: the alias and its auth (signature) public key."""
    alias: Alias
    alias_auth_key: bytes


# A direct queue belongs either to a client (user queue) or to an alias.
QueueOwner = ClientId | Alias


class AccountStore(Protocol):
    """The AS's persistent state. Methods raise :class:`Conflict` /
    :class:`NotFound` where noted; all other failures are bugs.

    :meth:`transaction` is one unit of work around several calls, on this
    store and on the direct-queue store kept in the same database: they
    commit together or not at all (the core registers and deletes users
    that way)."""

    def transaction(self) -> AbstractContextManager: ...

    # users and clients
    def create_user(self, user: UserEntry, client: ClientEntry,
                    connection_packages: list[tuple[bytes, int]]) -> None: ...
    def user_exists(self, user_id: UserId) -> bool: ...
    def get_user(self, user_id: UserId) -> UserEntry | None: ...
    def set_user_profile(self, user_id: UserId, encrypted_user_profile: bytes) -> None: ...
    def delete_user(self, user_id: UserId) -> list[ClientId]: ...
    def get_client(self, client_id: ClientId) -> ClientEntry | None: ...
    def delete_client(self, client_id: ClientId) -> bool: ...
    def expired_clients(self, now_ms: int) -> list[ClientId]: ...
    def add_connection_packages(self, client_id: ClientId, packages: list[tuple[bytes, int]]) -> None: ...
    def take_connection_package(self, user_id: UserId, now_ms: int) -> bytes | None: ...

    # aliases
    def create_alias(self, alias: AliasEntry) -> None: ...
    def get_alias(self, alias: Alias) -> AliasEntry | None: ...
    def delete_alias(self, alias: Alias) -> None: ...
    def add_alias_packages(self, alias: Alias, payloads: list[tuple[bytes, int]]) -> None: ...
    def take_alias_package(self, alias: Alias, now_ms: int) -> bytes | None: ...
    def expire_packages(self, now_ms: int) -> int: ...

    # after deletions
    def purge_deleted(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id BLOB PRIMARY KEY,
    opaque_record BLOB NOT NULL,
    user_profile BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS clients (
    client_id BLOB PRIMARY KEY,
    user_id BLOB NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    client_credential BLOB NOT NULL,
    not_after_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS clients_by_user ON clients(user_id);
CREATE INDEX IF NOT EXISTS clients_by_expiry ON clients(not_after_ms);
CREATE TABLE IF NOT EXISTS connection_packages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id BLOB NOT NULL REFERENCES clients(client_id) ON DELETE CASCADE,
    not_after_ms INTEGER NOT NULL,
    package BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS packages_by_client ON connection_packages(client_id);
CREATE INDEX IF NOT EXISTS packages_by_expiry ON connection_packages(not_after_ms);
CREATE TABLE IF NOT EXISTS aliases (
    alias BLOB PRIMARY KEY,
    alias_auth_key BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS alias_packages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alias BLOB NOT NULL REFERENCES aliases(alias) ON DELETE CASCADE,
    not_after_ms INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS packages_by_alias ON alias_packages(alias);
CREATE INDEX IF NOT EXISTS alias_packages_by_expiry ON alias_packages(not_after_ms);
-- AS OPAQUE key material (#as-state): secret, generated once.
CREATE TABLE IF NOT EXISTS opaque_key_material (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    server_setup BLOB NOT NULL
);
"""


def _package_rows(owner: bytes, packages: list[tuple[bytes, int]]) -> list[tuple[bytes, int, bytes]]:
    """``(owner, not_after_ms, package)`` rows; a ``not_after`` past SQLite's
    range is stored as its maximum (the package then never expires, as asked)."""
    return [(owner, min(not_after, _SQLITE_MAX), p) for p, not_after in packages]


def direct_queue_id(owner: QueueOwner) -> bytes:
    """The id of the direct queue of a client or an alias in :mod:`phoenix_ref.queues`."""
    if isinstance(owner, ClientId):
        return b"c" + encode(owner)
    if isinstance(owner, Alias):
        return b"a" + encode(owner)
    raise TypeError(f"a direct queue belongs to a ClientId or an Alias, not {type(owner).__name__}")


class SqliteAccountStore:
    """:class:`AccountStore` in an SQLite database (WAL), or ``":memory:"``.

    ``db`` is a path (the store opens its own connection, :func:`~phoenix_ref.storage.open_connection`)
    or the open connection of the AS's database with its re-entrant ``lock``.
    The direct queues live in the same database over the same connection
    (:func:`open_as_storage`), so :meth:`transaction` groups account and
    queue writes into one SQLite transaction. Every method is one unit of
    work that joins an open :meth:`transaction`. Safe to call from worker
    threads (``trio.to_thread.run_sync``, GUIDE §4). The caller owns the
    store and must :meth:`close` it.
    """

    def __init__(self, db: str | Path | sqlite3.Connection = ":memory:", lock: threading.RLock | None = None):
        self._own = not isinstance(db, sqlite3.Connection)
        self.connection = open_connection(db) if self._own else db
        self.lock = lock or threading.RLock()
        with self.lock:
            self.connection.executescript(_SCHEMA)

    def close(self) -> None:
        if self._own:
            with self.lock:
                self.connection.close()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One unit of work on the AS database: the calls made inside it (same
        thread), to this store and to the queue store sharing the connection,
        commit together or not at all (:func:`phoenix_ref.storage.transaction`)."""
        return transaction(self.connection, self.lock)

    def _read(self, sql: str, args: tuple) -> tuple | None:
        with self.lock:
            return self.connection.execute(sql, args).fetchone()

    # --- users and clients ---------------------------------------------------

    def create_user(self, user: UserEntry, client: ClientEntry,
                    connection_packages: list[tuple[bytes, int]]) -> None:
        """Create the user entry, its initial client entry and its connection
        packages ``(encoded package, not_after_ms)`` (``#finish-user-registration``),
        atomically. Raises :class:`Conflict` if the user id is taken."""
        uid = encode(user.user_id)
        cid = encode(client.client_id)
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM users WHERE user_id = ?", (uid,)).fetchone():
                raise Conflict(f"user {user.user_id} already exists", code="user_exists")
            db.execute("INSERT INTO users VALUES (?, ?, ?)",
                       (uid, user.opaque_record, user.encrypted_user_profile))
            db.execute("INSERT INTO clients VALUES (?, ?, ?, ?)",
                       (cid, uid, client.client_credential, min(client.not_after_ms, _SQLITE_MAX)))
            db.executemany("INSERT INTO connection_packages (client_id, not_after_ms, package) VALUES (?, ?, ?)",
                           _package_rows(cid, connection_packages))

    def user_exists(self, user_id: UserId) -> bool:
        return self._read("SELECT 1 FROM users WHERE user_id = ?", (encode(user_id),)) is not None

    def get_user(self, user_id: UserId) -> UserEntry | None:
        row = self._read("SELECT opaque_record, user_profile FROM users WHERE user_id = ?", (encode(user_id),))
        return None if row is None else UserEntry(user_id, row[0], row[1])

    def set_user_profile(self, user_id: UserId, encrypted_user_profile: bytes) -> None:
        with self.transaction() as db:
            cur = db.execute("UPDATE users SET user_profile = ? WHERE user_id = ?",
                             (encrypted_user_profile, encode(user_id)))
            if cur.rowcount == 0:
                raise NotFound(f"no user {user_id}", code="unknown_user")

    def delete_user(self, user_id: UserId) -> list[ClientId]:
        """Delete the user entry with all its client entries and their
        connection packages (``#user-account-deletion``); returns the deleted
        clients, whose direct queues the caller deletes."""
        uid = encode(user_id)
        with self.transaction() as db:
            cids = [decode(ClientId, bytes(r[0]))
                    for r in db.execute("SELECT client_id FROM clients WHERE user_id = ?", (uid,))]
            cur = db.execute("DELETE FROM users WHERE user_id = ?", (uid,))
            if cur.rowcount == 0:
                raise NotFound(f"no user {user_id}", code="unknown_user")
            return cids

    def count_users(self) -> int:
        (n,) = self._read("SELECT COUNT(*) FROM users", ())
        return n

    def list_users(self, limit: int, after: UserId | None = None) -> list[tuple[UserId, int]]:
        """Up to ``limit`` users with their number of clients, in the order of
        their encoded ids, starting after ``after`` (operator listing)."""
        with self.lock:
            rows = self.connection.execute(
                "SELECT u.user_id, COUNT(c.client_id) FROM users u LEFT JOIN clients c ON c.user_id = u.user_id "
                "WHERE u.user_id > ? GROUP BY u.user_id ORDER BY u.user_id LIMIT ?",
                (encode(after) if after is not None else b"", limit)).fetchall()
        return [(decode(UserId, bytes(uid)), n) for uid, n in rows]

    def get_client(self, client_id: ClientId) -> ClientEntry | None:
        row = self._read("SELECT client_credential, not_after_ms FROM clients WHERE client_id = ?",
                         (encode(client_id),))
        return None if row is None else ClientEntry(client_id, row[0], row[1])

    def expired_clients(self, now_ms: int) -> list[ClientId]:
        """The clients whose credential ended before ``now_ms``."""
        with self.lock:
            rows = self.connection.execute("SELECT client_id FROM clients WHERE not_after_ms < ? ORDER BY client_id",
                                           (now_ms,)).fetchall()
        return [decode(ClientId, bytes(r[0])) for r in rows]

    def delete_client(self, client_id: ClientId) -> bool:
        """Delete a client entry with its connection packages (the caller
        deletes its direct queue); the user entry goes with its last client,
        as a QS user record does (``spec/queuing_service.md#user-record-management-endpoints``).
        Returns whether the user entry was deleted. Raises NotFound."""
        cid = encode(client_id)
        with self.transaction() as db:
            row = db.execute("SELECT user_id FROM clients WHERE client_id = ?", (cid,)).fetchone()
            if row is None:
                raise NotFound(f"no client {client_id}", code="unknown_client")
            db.execute("DELETE FROM clients WHERE client_id = ?", (cid,))
            if db.execute("SELECT 1 FROM clients WHERE user_id = ?", (row[0],)).fetchone():
                return False
            db.execute("DELETE FROM users WHERE user_id = ?", (row[0],))
            return True

    def add_connection_packages(self, client_id: ClientId, packages: list[tuple[bytes, int]]) -> None:
        """Store ``(encoded ConnectionPackage, not_after_ms)`` pairs for a client."""
        cid = encode(client_id)
        with self.transaction() as db:
            if not db.execute("SELECT 1 FROM clients WHERE client_id = ?", (cid,)).fetchone():
                raise NotFound(f"no client {client_id}", code="unknown_client")
            db.executemany("INSERT INTO connection_packages (client_id, not_after_ms, package) VALUES (?, ?, ?)",
                           _package_rows(cid, packages))

    def take_connection_package(self, user_id: UserId, now_ms: int) -> bytes | None:
        """One connection package of any client of the user (``#get-user-id-connection-package``)."""
        with self.transaction() as db:
            db.execute("DELETE FROM connection_packages WHERE not_after_ms < ? AND client_id IN "
                       "(SELECT client_id FROM clients WHERE user_id = ?)", (now_ms, encode(user_id)))
            rows = db.execute(
                "SELECT p.id, p.package FROM connection_packages p JOIN clients c ON p.client_id = c.client_id "
                "WHERE c.user_id = ? ORDER BY p.id LIMIT 2", (encode(user_id),)).fetchall()
            return self._take(db, "connection_packages", rows)

    @staticmethod
    def _take(db: sqlite3.Connection, table: str, rows: list) -> bytes | None:
        """Hand out the oldest package; it is used up unless it is the last one,
        which is kept as a last resort so the owner stays reachable (decision)."""
        if not rows:
            return None
        if len(rows) > 1:
            db.execute(f"DELETE FROM {table} WHERE id = ?", (rows[0][0],))
        return rows[0][1]

    def purge_deleted(self) -> None:
        """After entries were deleted (outside any transaction): wipe their old
        versions from the write-ahead log too (:func:`phoenix_ref.storage.purge_deleted`;
        metadata minimalism, docs/storage.md)."""
        purge_deleted(self.connection, self.lock)

    # --- AS OPAQUE key material ------------------------------------------------------

    def opaque_server_setup(self) -> OpaqueServerSetup:
        """The AS OPAQUE key material (OPRF seed, server key pair), generated
        on first use and kept in this database: every stored OPAQUE record
        depends on it, so it must live exactly as long as the user entries
        (decision: with them rather than in the keys directory)."""
        with self.transaction() as db:
            row = db.execute("SELECT server_setup FROM opaque_key_material WHERE id = 1").fetchone()
            if row is not None:
                return OpaqueServerSetup.from_bytes(bytes(row[0]))
            setup = OpaqueServerSetup.generate()
            db.execute("INSERT INTO opaque_key_material VALUES (1, ?)", (setup.to_bytes(),))
            return setup

    # --- aliases -------------------------------------------------------------------

    def create_alias(self, alias: AliasEntry) -> None:
        """``#register-alias``: raises :class:`Conflict` if the alias is taken."""
        key = encode(alias.alias)
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM aliases WHERE alias = ?", (key,)).fetchone():
                raise Conflict(f"alias {alias.alias} is already registered", code="alias_exists")
            db.execute("INSERT INTO aliases VALUES (?, ?)", (key, alias.alias_auth_key))

    def get_alias(self, alias: Alias) -> AliasEntry | None:
        row = self._read("SELECT alias_auth_key FROM aliases WHERE alias = ?", (encode(alias),))
        return None if row is None else AliasEntry(alias, row[0])

    def delete_alias(self, alias: Alias) -> None:
        """``#delete-alias``: the entry and its package payloads (the caller
        deletes its direct queue)."""
        with self.transaction() as db:
            if db.execute("DELETE FROM aliases WHERE alias = ?", (encode(alias),)).rowcount == 0:
                raise NotFound(f"no alias {alias}", code="unknown_alias")

    def add_alias_packages(self, alias: Alias, payloads: list[tuple[bytes, int]]) -> None:
        key = encode(alias)
        with self.transaction() as db:
            if not db.execute("SELECT 1 FROM aliases WHERE alias = ?", (key,)).fetchone():
                raise NotFound(f"no alias {alias}", code="unknown_alias")
            db.executemany("INSERT INTO alias_packages (alias, not_after_ms, payload) VALUES (?, ?, ?)",
                           _package_rows(key, payloads))

    def expire_packages(self, now_ms: int) -> int:
        """Delete every connection package and alias package payload whose
        lifetime ended before ``now_ms`` (the last-resort one too: an expired
        package is of no use to anyone); returns how many went."""
        with self.transaction() as db:
            return sum(db.execute(f"DELETE FROM {table} WHERE not_after_ms < ?", (now_ms,)).rowcount
                       for table in ("connection_packages", "alias_packages"))

    def take_alias_package(self, alias: Alias, now_ms: int) -> bytes | None:
        key = encode(alias)
        with self.transaction() as db:
            db.execute("DELETE FROM alias_packages WHERE alias = ? AND not_after_ms < ?", (key, now_ms))
            rows = db.execute("SELECT id, payload FROM alias_packages WHERE alias = ? ORDER BY id LIMIT 2",
                              (key,)).fetchall()
            return self._take(db, "alias_packages", rows)


def delete_user_entirely(accounts: "SqliteAccountStore | AccountStore", queues: Queues,
                         user_id: UserId) -> list[ClientId]:
    """Delete a user entry, its client entries and connection packages and
    the clients' direct queues in one transaction, then purge the deleted
    rows from the files (``spec/authentication_service.md#user-account-deletion``;
    the AS core after Client 2FA, ``phoenix-ref admin delete-user`` without).
    Returns the deleted clients; raises NotFound for an unknown user."""
    with accounts.transaction():   # the entries and every queue, or nothing
        clients = accounts.delete_user(user_id)
        for cid in clients:
            try:
                queues.delete(direct_queue_id(cid))
            except NotFound:
                pass
    accounts.purge_deleted()
    return clients


def open_as_storage(db: str | Path | sqlite3.Connection, lock: threading.RLock | None = None, *,
                    max_messages: int | None = None,
                    rotation_interval_ms: int | None = 24 * 3600 * 1000) -> tuple[SqliteAccountStore, Queues]:
    """The AS's storage in one SQLite database over one connection: accounts
    and direct queues (tables ``as_direct_*``, activity kept to the month,
    ``#as-state``, rotation times to the day, docs/storage.md). ``db`` and ``lock`` as for :class:`SqliteAccountStore`;
    the queue store shares the account store's connection, so
    ``accounts.transaction()`` covers both. ``max_messages`` is the AS's
    "maximal number of requested messages" (``#configuration``). The caller
    closes the account store (the queue store owns nothing)."""
    accounts = SqliteAccountStore(db, lock)
    cfg = QueueConfig(activity_precision=TimePrecision.MONTH, rotation_precision=TimePrecision.DAY,
                      rotation_interval_ms=rotation_interval_ms)
    if max_messages is not None:
        cfg = dataclasses.replace(cfg, max_messages=max_messages)
    return accounts, Queues(SqliteQueueStore(accounts.connection, "as_direct", accounts.lock), cfg)
