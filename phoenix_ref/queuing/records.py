"""QS storage of records (``spec/queuing_service.md#qs-state``), apart from queues.

What lives here:

* **QS user records** (QsUid → user record auth key, friendship token) and
  their **client records** (QsCid → client record auth key, queue encryption
  key, optional encrypted push token, blocklist salt). Queued messages and
  the queue key material live in :mod:`phoenix_ref.queues`, keyed by the
  encoded QsCid.
* **KeyPackages**, as encoded AddPackages per client, one marked last resort
  (``#publish-keypackages``, ``#get-addpackage``).
* **Blocklists**: salted group-id hashes per client (``#qs-state``:
  "List of salted group ID hashes"); see :func:`blocklist_hash`.
* **Taken message ids** with the answer each got: ids of federated
  QsToQsMessages per source domain (``#federated-qs-to-qs-communication``,
  replays) and the ids the local DS hands fan-outs over with, under the
  source :data:`LOCAL_SOURCE` (``#local-enqueue-message``, idempotent
  hand-over; docs/decisions.md "A40").

Every method is one atomic transaction, so a request that needs one read and
one write touches the store twice at most (``spec/performance_goals.md``,
IO overhead). Two implementations: :class:`MemoryQsRecords` (tests) and
:class:`SqliteQsRecords` (stdlib ``sqlite3``, WAL, one connection behind a
lock, safe to call from worker threads).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

from ..codec import decode, encode
from ..crypto import hash_
from ..errors import Conflict
from ..ids import GroupId, QsCid, QsUid
from ..storage import RowCache, chunks, open_connection, transaction

__all__ = [
    "UserRecord", "ClientRecord", "EnqueueKeys", "QsRecords", "MemoryQsRecords", "SqliteQsRecords",
    "blocklist_hash", "BLOCKLIST_SALT_LEN", "LOCAL_SOURCE",
]

BLOCKLIST_SALT_LEN = 32
#: The source under which the ids of the local DS's fan-outs are kept. It is
#: no domain name (an Fqdn has at least two labels), so it never meets the
#: ids of a federated source.
LOCAL_SOURCE = "local"


def blocklist_hash(salt: bytes, group_id: GroupId | bytes) -> bytes:
    """``Hash(salt || encode(GroupId))``: what the blocklist stores (``#qs-state``).
    ``group_id`` may be given already encoded."""
    return hash_(salt + (group_id if isinstance(group_id, bytes) else encode(group_id)))


@dataclass(frozen=True)
class UserRecord:
    qs_uid: QsUid
    user_record_auth_key: bytes
    friendship_token: bytes


@dataclass(frozen=True)
class ClientRecord:
    qs_cid: QsCid
    client_record_auth_key: bytes
    queue_encryption_key: bytes
    encrypted_push_token: bytes | None
    blocklist_salt: bytes


class EnqueueKeys(NamedTuple):
    """A client record as a fan-out sees it (:meth:`QsRecords.clients_for_enqueue`)."""
    client_record_auth_key: bytes
    queue_encryption_key: bytes
    blocked: bool


class QsRecords(Protocol):
    """The QS record store. Every method is one transaction; methods raise
    :class:`Conflict` where noted and return None/False for unknown ids."""

    def create_user(self, user: UserRecord, client: ClientRecord) -> None:
        """Store a new user with its first client. Conflict: friendship token in use."""

    def get_user(self, qs_uid: QsUid) -> tuple[UserRecord, list[ClientRecord]] | None: ...

    def update_user(self, qs_uid: QsUid, user_record_auth_key: bytes, friendship_token: bytes) -> bool:
        """Overwrite the user's keys. Conflict: friendship token of another user."""

    def delete_user(self, qs_uid: QsUid) -> list[QsCid]:
        """Delete the user, its clients, their KeyPackages and blocklists;
        returns the QsCids that were deleted (empty if there was no such user)."""

    def add_client(self, client: ClientRecord, max_clients: int) -> bool:
        """Add a client to an existing user (False if the user does not exist).
        Conflict: the user already has ``max_clients`` clients."""

    def get_client(self, qs_cid: QsCid) -> ClientRecord | None: ...

    def client_for_enqueue(self, qs_cid: QsCid, group_id: GroupId) -> tuple[ClientRecord, bool] | None:
        """The client record and whether ``group_id`` is on its blocklist."""

    def clients_for_enqueue(self, qs_cids: list[bytes], group_id: GroupId) -> dict[bytes, EnqueueKeys]:
        """What a fan-out needs of its clients, in one read: for every encoded
        QsCid in ``qs_cids`` that has a client record, its keys and whether
        ``group_id`` is on its blocklist. Unknown QsCids are absent."""

    def update_client(self, qs_cid: QsCid, client_record_auth_key: bytes, queue_encryption_key: bytes,
                      encrypted_push_token: bytes | None) -> bool: ...

    def delete_client(self, qs_cid: QsCid) -> tuple[bool, bool]:
        """Delete one client: ``(client existed, its user record went with it)``."""

    def block(self, qs_cid: QsCid, group_id: GroupId) -> bool: ...

    def replace_add_packages(self, qs_cid: QsCid, packages: list[tuple[bytes, bool, int]]) -> bool:
        """Delete the client's AddPackages, store ``(encoded AddPackage,
        last_resort, not_after)`` ones; ``not_after`` is the end of the
        KeyPackage's lifetime in seconds (RFC 9420 §7.2, inclusive)."""

    def take_add_packages(self, friendship_token: bytes, now_s: int) -> list[bytes] | None:
        """For the user with this token: one AddPackage per client that has
        any whose lifetime has not ended at ``now_s``, an ordinary one
        (deleted: used once) before a last-resort one (kept). None when no
        user has the token."""

    def expire_add_packages(self, now_s: int) -> int:
        """Delete the AddPackages whose lifetime ended before ``now_s``,
        last-resort ones too; returns how many."""

    def message_answer(self, source: str, message_id: bytes, now_ms: int) -> bytes | None:
        """The answer stored with ``(source, message_id)`` if that id is taken
        and has not expired at ``now_ms``, else None. Purges expired ids."""

    def remember_message_id(self, source: str, message_id: bytes, answer: bytes, expires_ms: int) -> None:
        """Take ``(source, message_id)`` until ``expires_ms``, with the answer
        it got. Meant inside the transaction that checked
        :meth:`message_answer` and did the work; an id that is taken already
        is a caller's bug (the SQLite store raises ``IntegrityError``)."""

    def close(self) -> None: ...


def _take_one(rows: list[tuple]) -> tuple | None:
    """Prefer an ordinary KeyPackage (oldest first) over a last-resort one."""
    ordinary = [r for r in rows if not r[2]]
    if ordinary:
        return ordinary[0]
    return rows[0] if rows else None


# --- in-memory --------------------------------------------------------------------------

class MemoryQsRecords:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._users: dict[QsUid, UserRecord] = {}
        self._clients: dict[QsCid, ClientRecord] = {}
        self._kps: dict[QsCid, list[tuple[int, bytes, bool, int]]] = {}   # (seq, package, last resort, not_after)
        self._blocked: set[tuple[QsCid, bytes]] = set()
        self._taken: dict[tuple[str, bytes], tuple[int, bytes]] = {}   # → (expires_ms, answer)
        self._kp_seq = 0

    def _token_owner(self, token: bytes) -> QsUid | None:
        for u in self._users.values():
            if u.friendship_token == token:
                return u.qs_uid
        return None

    def _clients_of(self, qs_uid: QsUid) -> list[ClientRecord]:
        return [c for c in self._clients.values() if c.qs_cid.qs_uid == qs_uid]

    def create_user(self, user, client):
        with self._lock:
            if user.qs_uid in self._users or client.qs_cid in self._clients:
                raise Conflict("QS user record exists", code="record_exists")
            if self._token_owner(user.friendship_token) is not None:
                raise Conflict("friendship token already in use", code="friendship_token_in_use")
            self._users[user.qs_uid] = user
            self._clients[client.qs_cid] = client

    def get_user(self, qs_uid):
        with self._lock:
            u = self._users.get(qs_uid)
            return None if u is None else (u, self._clients_of(qs_uid))

    def update_user(self, qs_uid, user_record_auth_key, friendship_token):
        with self._lock:
            u = self._users.get(qs_uid)
            if u is None:
                return False
            owner = self._token_owner(friendship_token)
            if owner is not None and owner != qs_uid:
                raise Conflict("friendship token already in use", code="friendship_token_in_use")
            self._users[qs_uid] = replace(u, user_record_auth_key=user_record_auth_key,
                                          friendship_token=friendship_token)
            return True

    def _drop_client(self, qs_cid):
        self._clients.pop(qs_cid, None)
        self._kps.pop(qs_cid, None)
        self._blocked = {b for b in self._blocked if b[0] != qs_cid}

    def delete_user(self, qs_uid):
        with self._lock:
            if self._users.pop(qs_uid, None) is None:
                return []
            gone = [c.qs_cid for c in self._clients_of(qs_uid)]
            for cid in gone:
                self._drop_client(cid)
            return gone

    def add_client(self, client, max_clients):
        with self._lock:
            if client.qs_cid.qs_uid not in self._users:
                return False
            if client.qs_cid in self._clients:
                raise Conflict("QS client record exists", code="record_exists")
            if len(self._clients_of(client.qs_cid.qs_uid)) >= max_clients:
                raise Conflict(f"a user has at most {max_clients} client records", code="too_many_clients")
            self._clients[client.qs_cid] = client
            return True

    def get_client(self, qs_cid):
        with self._lock:
            return self._clients.get(qs_cid)

    def client_for_enqueue(self, qs_cid, group_id):
        with self._lock:
            c = self._clients.get(qs_cid)
            if c is None:
                return None
            return c, (qs_cid, blocklist_hash(c.blocklist_salt, group_id)) in self._blocked

    def clients_for_enqueue(self, qs_cids, group_id):
        with self._lock:
            out = {}
            for raw in qs_cids:
                found = self.client_for_enqueue(decode(QsCid, raw), group_id)
                if found is not None:
                    c, blocked = found
                    out[raw] = EnqueueKeys(c.client_record_auth_key, c.queue_encryption_key, blocked)
            return out

    def update_client(self, qs_cid, client_record_auth_key, queue_encryption_key, encrypted_push_token):
        with self._lock:
            c = self._clients.get(qs_cid)
            if c is None:
                return False
            self._clients[qs_cid] = replace(c, client_record_auth_key=client_record_auth_key,
                                            queue_encryption_key=queue_encryption_key,
                                            encrypted_push_token=encrypted_push_token)
            return True

    def delete_client(self, qs_cid):
        with self._lock:
            if qs_cid not in self._clients:
                return False, False
            self._drop_client(qs_cid)
            if not self._clients_of(qs_cid.qs_uid):
                self._users.pop(qs_cid.qs_uid, None)
                return True, True
            return True, False

    def block(self, qs_cid, group_id):
        with self._lock:
            c = self._clients.get(qs_cid)
            if c is None:
                return False
            self._blocked.add((qs_cid, blocklist_hash(c.blocklist_salt, group_id)))
            return True

    def replace_add_packages(self, qs_cid, packages):
        with self._lock:
            if qs_cid not in self._clients:
                return False
            rows = []
            for data, last_resort, not_after in packages:
                self._kp_seq += 1
                rows.append((self._kp_seq, data, last_resort, not_after))
            self._kps[qs_cid] = rows
            return True

    def take_add_packages(self, friendship_token, now_s):
        with self._lock:
            owner = self._token_owner(friendship_token)
            if owner is None:
                return None
            out = []
            for c in sorted(self._clients_of(owner), key=lambda c: encode(c.qs_cid)):
                pick = _take_one([r for r in self._kps.get(c.qs_cid, []) if r[3] >= now_s])
                if pick is None:
                    continue
                out.append(pick[1])
                if not pick[2]:
                    self._kps[c.qs_cid] = [r for r in self._kps[c.qs_cid] if r[0] != pick[0]]
            return out

    def expire_add_packages(self, now_s):
        with self._lock:
            n = 0
            for qs_cid, rows in self._kps.items():
                kept = [r for r in rows if r[3] >= now_s]
                n += len(rows) - len(kept)
                self._kps[qs_cid] = kept
            return n

    def message_answer(self, source, message_id, now_ms):
        with self._lock:
            self._taken = {k: v for k, v in self._taken.items() if v[0] > now_ms}
            taken = self._taken.get((source, message_id))
            return None if taken is None else taken[1]

    def remember_message_id(self, source, message_id, answer, expires_ms):
        with self._lock:
            if (source, message_id) in self._taken:
                raise ValueError(f"message id {message_id.hex()} of {source} is taken already")
            self._taken[(source, message_id)] = (expires_ms, answer)

    def close(self):
        pass


# --- SQLite -------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS qs_users (
    qs_uid BLOB PRIMARY KEY,
    user_record_auth_key BLOB NOT NULL,
    friendship_token BLOB NOT NULL UNIQUE
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS qs_clients (
    qs_cid BLOB PRIMARY KEY,
    qs_uid BLOB NOT NULL,
    client_record_auth_key BLOB NOT NULL,
    queue_encryption_key BLOB NOT NULL,
    encrypted_push_token BLOB,
    blocklist_salt BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS qs_clients_uid ON qs_clients (qs_uid);
CREATE TABLE IF NOT EXISTS qs_key_packages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    qs_cid BLOB NOT NULL,
    add_package BLOB NOT NULL,
    last_resort INTEGER NOT NULL,
    not_after_s INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS qs_key_packages_cid ON qs_key_packages (qs_cid, last_resort, id);
CREATE INDEX IF NOT EXISTS qs_key_packages_expiry ON qs_key_packages (not_after_s);
CREATE TABLE IF NOT EXISTS qs_blocklist (
    qs_cid BLOB NOT NULL,
    group_hash BLOB NOT NULL,
    PRIMARY KEY (qs_cid, group_hash)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS qs_message_ids (
    source TEXT NOT NULL,
    message_id BLOB NOT NULL,
    expires_ms INTEGER NOT NULL,
    answer BLOB NOT NULL,
    PRIMARY KEY (source, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS qs_message_ids_exp ON qs_message_ids (expires_ms);
DROP TABLE IF EXISTS qs_seen_messages;
DROP TABLE IF EXISTS qs_rate_limits;
"""

#: SQLite INTEGER is signed 64-bit; a KeyPackage's ``not_after`` is a u64.
_SQLITE_MAX = (1 << 63) - 1

_CLIENT_COLS = "qs_cid, client_record_auth_key, queue_encryption_key, encrypted_push_token, blocklist_salt"


def _client(row) -> ClientRecord:
    return ClientRecord(decode(QsCid, bytes(row[0])), bytes(row[1]), bytes(row[2]),
                        None if row[3] is None else bytes(row[3]), bytes(row[4]))


class SqliteQsRecords:
    """:class:`QsRecords` in an SQLite file (tables ``qs_*``).

    ``db`` is a path (the store opens its own connection) or a connection
    shared with the other stores of the QS (:class:`phoenix_ref.queuing.store.QsStore`)
    with their re-entrant ``lock``; ``connection``, ``lock`` and
    :meth:`transaction` are public so that those stores can join its
    transactions.
    """

    def __init__(self, db: str | os.PathLike | sqlite3.Connection, lock: threading.RLock | None = None, *,
                 max_cached: int = 100_000) -> None:
        self._own = not isinstance(db, sqlite3.Connection)
        self.connection = open_connection(os.fspath(db)) if self._own else db
        self.lock = lock or threading.RLock()
        # What fan-outs need of a client record, per encoded QsCid: (its keys
        # as an unblocked EnqueueKeys, blocklist salt, blocklist hashes).
        # Filled and invalidated under ``lock`` only, so a fill cannot race
        # an invalidation.
        self._enqueue_cache: RowCache[bytes, tuple[EnqueueKeys, bytes, frozenset[bytes]]] = \
            RowCache(self.connection, max_cached)
        with self.lock:
            self.connection.executescript(_SCHEMA)

    def _forget(self, cids: list[bytes]) -> None:
        """Drop cached fan-out data of these encoded QsCids (caller holds the lock)."""
        for cid in cids:
            self._enqueue_cache.discard(cid)

    def transaction(self):
        """One unit of work (:func:`phoenix_ref.storage.transaction`: a
        transaction, or a savepoint inside the owner's)."""
        return transaction(self.connection, self.lock)

    def create_user(self, user, client):
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM qs_users WHERE friendship_token=?", (user.friendship_token,)).fetchone():
                raise Conflict("friendship token already in use", code="friendship_token_in_use")
            try:
                db.execute("INSERT INTO qs_users VALUES (?,?,?)",
                           (encode(user.qs_uid), user.user_record_auth_key, user.friendship_token))
                self._insert_client(db, client)
            except sqlite3.IntegrityError:
                raise Conflict("QS user record exists", code="record_exists") from None

    @staticmethod
    def _insert_client(db, c: ClientRecord) -> None:
        db.execute(f"INSERT INTO qs_clients (qs_uid, {_CLIENT_COLS}) VALUES (?,?,?,?,?,?)",
                   (encode(c.qs_cid.qs_uid), encode(c.qs_cid), c.client_record_auth_key,
                    c.queue_encryption_key, c.encrypted_push_token, c.blocklist_salt))

    def get_user(self, qs_uid):
        with self.transaction() as db:
            row = db.execute("SELECT user_record_auth_key, friendship_token FROM qs_users WHERE qs_uid=?",
                             (encode(qs_uid),)).fetchone()
            if row is None:
                return None
            clients = db.execute(f"SELECT {_CLIENT_COLS} FROM qs_clients WHERE qs_uid=? ORDER BY qs_cid",
                                 (encode(qs_uid),)).fetchall()
            return UserRecord(qs_uid, bytes(row[0]), bytes(row[1])), [_client(c) for c in clients]

    def update_user(self, qs_uid, user_record_auth_key, friendship_token):
        with self.transaction() as db:
            owner = db.execute("SELECT qs_uid FROM qs_users WHERE friendship_token=?", (friendship_token,)).fetchone()
            if owner is not None and bytes(owner[0]) != encode(qs_uid):
                raise Conflict("friendship token already in use", code="friendship_token_in_use")
            cur = db.execute("UPDATE qs_users SET user_record_auth_key=?, friendship_token=? WHERE qs_uid=?",
                             (user_record_auth_key, friendship_token, encode(qs_uid)))
            return cur.rowcount == 1

    def _drop_clients(self, db, cids: list[bytes]) -> None:
        self._forget(cids)
        for cid in cids:
            db.execute("DELETE FROM qs_key_packages WHERE qs_cid=?", (cid,))
            db.execute("DELETE FROM qs_blocklist WHERE qs_cid=?", (cid,))
            db.execute("DELETE FROM qs_clients WHERE qs_cid=?", (cid,))

    def delete_user(self, qs_uid):
        with self.transaction() as db:
            uid = encode(qs_uid)
            if db.execute("DELETE FROM qs_users WHERE qs_uid=?", (uid,)).rowcount == 0:
                return []
            cids = [bytes(r[0]) for r in db.execute("SELECT qs_cid FROM qs_clients WHERE qs_uid=?", (uid,))]
            self._drop_clients(db, cids)
            return [decode(QsCid, c) for c in cids]

    def add_client(self, client, max_clients):
        with self.transaction() as db:
            uid = encode(client.qs_cid.qs_uid)
            if db.execute("SELECT 1 FROM qs_users WHERE qs_uid=?", (uid,)).fetchone() is None:
                return False
            (n,) = db.execute("SELECT COUNT(*) FROM qs_clients WHERE qs_uid=?", (uid,)).fetchone()
            if n >= max_clients:
                raise Conflict(f"a user has at most {max_clients} client records", code="too_many_clients")
            try:
                self._insert_client(db, client)
            except sqlite3.IntegrityError:
                raise Conflict("QS client record exists", code="record_exists") from None
            return True

    def get_client(self, qs_cid):
        with self.lock:
            row = self.connection.execute(f"SELECT {_CLIENT_COLS} FROM qs_clients WHERE qs_cid=?",
                                          (encode(qs_cid),)).fetchone()
        return None if row is None else _client(row)

    def client_for_enqueue(self, qs_cid, group_id):
        # One read: the record and its blocklist entries in one statement
        # (the salted hash needs the record's salt, so it is compared here).
        with self.lock:
            rows = self.connection.execute(
                f"SELECT {', '.join('c.' + x.strip() for x in _CLIENT_COLS.split(','))}, b.group_hash "
                "FROM qs_clients c LEFT JOIN qs_blocklist b ON b.qs_cid = c.qs_cid "
                "WHERE c.qs_cid=?", (encode(qs_cid),)).fetchall()
        if not rows:
            return None
        client = _client(rows[0])
        wanted = blocklist_hash(client.blocklist_salt, group_id)
        return client, any(r[5] is not None and bytes(r[5]) == wanted for r in rows)

    def clients_for_enqueue(self, qs_cids, group_id):
        # One read for the records not in the cache: every record of the
        # fan-out with its blocklist entries (a LEFT JOIN gives one row per
        # entry, or one with NULL). The salted hash needs each record's salt,
        # so it is compared here; the GroupId is encoded once.
        ids = list(dict.fromkeys(qs_cids))
        with self.lock:
            found, missing = self._enqueue_cache.lookup(ids)
            rows = []
            for chunk in chunks(missing):
                rows += self.connection.execute(
                    "SELECT c.qs_cid, c.client_record_auth_key, c.queue_encryption_key, c.blocklist_salt, "
                    "b.group_hash FROM qs_clients c LEFT JOIN qs_blocklist b ON b.qs_cid = c.qs_cid "
                    f"WHERE c.qs_cid IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            read: dict[bytes, tuple[bytes, bytes, bytes, set[bytes]]] = {}
            for cid, auth_key, queue_key, salt, group_hash in rows:
                entry = read.setdefault(bytes(cid), (bytes(auth_key), bytes(queue_key), bytes(salt), set()))
                if group_hash is not None:
                    entry[3].add(bytes(group_hash))
            for cid, (auth_key, queue_key, salt, hashes) in read.items():
                found[cid] = entry = (EnqueueKeys(auth_key, queue_key, False), salt, frozenset(hashes))
                self._enqueue_cache.put(cid, entry)
        group = encode(group_id)
        # Most records block nothing: their cached EnqueueKeys is the answer.
        return {cid: keys if not hashes or blocklist_hash(salt, group) not in hashes else keys._replace(blocked=True)
                for cid, (keys, salt, hashes) in found.items()}

    def update_client(self, qs_cid, client_record_auth_key, queue_encryption_key, encrypted_push_token):
        with self.transaction() as db:
            self._forget([encode(qs_cid)])
            cur = db.execute("UPDATE qs_clients SET client_record_auth_key=?, queue_encryption_key=?, "
                             "encrypted_push_token=? WHERE qs_cid=?",
                             (client_record_auth_key, queue_encryption_key, encrypted_push_token, encode(qs_cid)))
            return cur.rowcount == 1

    def delete_client(self, qs_cid):
        with self.transaction() as db:
            cid = encode(qs_cid)
            if db.execute("SELECT 1 FROM qs_clients WHERE qs_cid=?", (cid,)).fetchone() is None:
                return False, False
            self._drop_clients(db, [cid])
            uid = encode(qs_cid.qs_uid)
            if db.execute("SELECT 1 FROM qs_clients WHERE qs_uid=? LIMIT 1", (uid,)).fetchone() is None:
                db.execute("DELETE FROM qs_users WHERE qs_uid=?", (uid,))
                return True, True
            return True, False

    def block(self, qs_cid, group_id):
        with self.transaction() as db:
            row = db.execute("SELECT blocklist_salt FROM qs_clients WHERE qs_cid=?", (encode(qs_cid),)).fetchone()
            if row is None:
                return False
            self._forget([encode(qs_cid)])
            db.execute("INSERT OR IGNORE INTO qs_blocklist VALUES (?,?)",
                       (encode(qs_cid), blocklist_hash(bytes(row[0]), group_id)))
            return True

    def replace_add_packages(self, qs_cid, packages):
        with self.transaction() as db:
            cid = encode(qs_cid)
            if db.execute("SELECT 1 FROM qs_clients WHERE qs_cid=?", (cid,)).fetchone() is None:
                return False
            db.execute("DELETE FROM qs_key_packages WHERE qs_cid=?", (cid,))
            db.executemany("INSERT INTO qs_key_packages (qs_cid, add_package, last_resort, not_after_s) "
                           "VALUES (?,?,?,?)",
                           [(cid, data, int(lr), min(not_after, _SQLITE_MAX)) for data, lr, not_after in packages])
            return True

    def take_add_packages(self, friendship_token, now_s):
        with self.transaction() as db:
            owner = db.execute("SELECT qs_uid FROM qs_users WHERE friendship_token=?", (friendship_token,)).fetchone()
            if owner is None:
                return None
            out = []
            cids = db.execute("SELECT qs_cid FROM qs_clients WHERE qs_uid=? ORDER BY qs_cid", (owner[0],)).fetchall()
            for (cid,) in cids:
                rows = db.execute("SELECT id, add_package, last_resort FROM qs_key_packages WHERE qs_cid=? "
                                  "AND not_after_s >= ? ORDER BY last_resort, id LIMIT 1", (cid, now_s)).fetchall()
                pick = _take_one([(r[0], bytes(r[1]), bool(r[2])) for r in rows])
                if pick is None:
                    continue
                out.append(pick[1])
                if not pick[2]:
                    db.execute("DELETE FROM qs_key_packages WHERE id=?", (pick[0],))
            return out

    def expire_add_packages(self, now_s):
        with self.transaction() as db:
            return db.execute("DELETE FROM qs_key_packages WHERE not_after_s < ?", (now_s,)).rowcount

    def message_answer(self, source, message_id, now_ms):
        with self.transaction() as db:
            db.execute("DELETE FROM qs_message_ids WHERE expires_ms <= ?", (now_ms,))
            row = db.execute("SELECT answer FROM qs_message_ids WHERE source=? AND message_id=?",
                             (source, message_id)).fetchone()
            return None if row is None else bytes(row[0])

    def remember_message_id(self, source, message_id, answer, expires_ms):
        with self.transaction() as db:
            db.execute("INSERT INTO qs_message_ids VALUES (?,?,?,?)", (source, message_id, expires_ms, answer))

    def close(self):
        if self._own:
            with self.lock:
                self.connection.close()
