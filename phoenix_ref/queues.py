"""Encrypted message queues shared by the QS fan-out queues and the AS direct queues.

Both services keep, per queue (``spec/queuing_service.md#qs-state``,
``spec/authentication_service.md#as-state``): queue encryption key material,
a current sequence number, the queued ciphertexts and an activity time. This
module holds those semantics once:

* **create** — a queue with its key material. A QS queue starts with the
  sealed initial ratchet key as message 0
  (``spec/queuing_service/queue_encryption.md#key-ratcheting``); an AS direct
  queue starts from the owner's ``initial_queue_ratchet_key``.
* **enqueue** — encrypt under the ratchet, tag with the current sequence
  number, then increment it (``#qs-state``: "assigned the current sequence
  number, after which the current sequence number is incremented"). A
  ratchet key update is enqueued first when the rotation interval has passed
  (``spec/queuing_service/queue_encryption.md#key-updates``).
* **dequeue** — ``spec/queuing_service.md#dequeue-messages`` and
  ``spec/authentication_service.md#dequeue-messages``: delete the messages
  older than ``sequence_number_start``, return those from it on, at most
  min(remaining, requested, configured maximum), and say how many remain
  after the returned ones. Returned messages stay stored until a later
  dequeue starts past them, so a lost response loses nothing.
* **delete** — the queue and all its messages.

The activity time is set on creation and on every dequeue ("the last time a
client has fetched messages"). AS direct queues keep only year and month
("the month and year a client has last fetched messages"), stored as the
first millisecond of that UTC month (:func:`month_start_ms`), and the time of
the last ratchet rotation only to the day; QS queues keep milliseconds
(:class:`QueueConfig`, docs/storage.md).

Storage is a narrow :class:`QueueStore` protocol with two implementations,
:class:`MemoryQueueStore` and :class:`SqliteQueueStore` (stdlib ``sqlite3``,
one transaction per operation). :class:`Queues` is the sans-IO core over a
store; it takes ``now_ms`` explicitly and is synchronous — HTTP handlers call
it through ``trio.to_thread.run_sync`` (GUIDE §4).
"""

from __future__ import annotations

import collections
import datetime
import enum
import functools
import os
import re
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from . import queue_crypto as qc
from .codec import U64, decode, encode, struct, vec
from .errors import Conflict, NotFound
from .storage import RowCache, chunks, open_connection, transaction

__all__ = [
    "TimePrecision", "QueueConfig", "QueueInfo", "DequeueResult", "DequeueMessagesResponse",
    "AppendFn", "QueueStore", "MemoryQueueStore", "SqliteQueueStore", "Queues", "month_start_ms",
    "DEFAULT_MAX_MESSAGES",
]

DEFAULT_MAX_MESSAGES = 500  # spec/queuing_service.md#qs-configuration-options
_SQLITE_MAX = (1 << 63) - 1  # SQLite INTEGER is signed 64-bit


class TimePrecision(enum.Enum):
    """How precisely a queue keeps a time it stores."""
    MILLISECOND = "ms"  # QS client records
    DAY = "day"         # AS direct queues: ratchet rotation times
    MONTH = "month"     # AS direct queues: year and month of the last fetch

    def truncate(self, now_ms: int) -> int:
        """``now_ms`` cut down to this precision (the first millisecond, UTC, of its day or month)."""
        if self is TimePrecision.MONTH:
            return month_start_ms(now_ms)
        if self is TimePrecision.DAY:
            return now_ms - now_ms % DAY_MS
        return now_ms


DAY_MS = 86_400_000


def month_start_ms(now_ms: int) -> int:
    """The first millisecond (UTC) of the month containing ``now_ms``."""
    t = datetime.datetime.fromtimestamp(now_ms / 1000, tz=datetime.timezone.utc)
    start = datetime.datetime(t.year, t.month, 1, tzinfo=datetime.timezone.utc)
    return int(start.timestamp()) * 1000


@dataclass(frozen=True)
class QueueConfig:
    """Per-service queue settings.

    ``max_messages`` is the configured maximum of returned messages
    (``spec/queuing_service.md#qs-configuration-options``, default 500; the AS
    has the same option). ``rotation_interval_ms`` is the ratchet key rotation
    interval (``None``: no periodic rotation). ``activity_precision`` and
    ``rotation_precision`` say how precisely the last fetch and the last
    ratchet rotation are stored: the AS keeps only what it needs
    (``spec/threat_model/stride/security_requirements.md#metadata-minimalism``,
    docs/storage.md) — the month of the last fetch (``#as-state``) and the
    day of the last rotation, which a rotation interval of a day or more
    needs; a rotation then happens at the first enqueue at least one
    interval after the start of that day.
    """
    max_messages: int = DEFAULT_MAX_MESSAGES
    rotation_interval_ms: int | None = 24 * 3600 * 1000
    activity_precision: TimePrecision = TimePrecision.MILLISECOND
    rotation_precision: TimePrecision = TimePrecision.MILLISECOND

    def activity(self, now_ms: int) -> int:
        return self.activity_precision.truncate(now_ms)

    def rotation_stamp(self, now_ms: int) -> int:
        """The rotation time stored for a rotation at ``now_ms``."""
        return self.rotation_precision.truncate(now_ms)


@dataclass(frozen=True)
class QueueInfo:
    next_sequence_number: int
    key_material: qc.QueueKeyMaterial
    activity_ms: int
    message_count: int


@dataclass(frozen=True)
class DequeueResult:
    messages: list[qc.QueueMessage]
    remaining: int


@struct
class DequeueMessagesResponse:
    """Answer of both dequeue endpoints (the spec names no response struct):
    the returned messages and how many are left after them."""
    messages: vec(qc.QueueMessage)
    remaining_messages_number: U64


# A store calls ``build(material)`` inside its transaction with the queue's key
# material, whose ``generation`` is the queue's next sequence number. It
# returns the payloads to store at that number and the following ones, and the
# key material to store in place of the old one (its generation advanced by
# the number of payloads).
AppendFn = Callable[[qc.QueueKeyMaterial], tuple[list[bytes], qc.QueueKeyMaterial]]


class QueueStore(Protocol):
    """Storage of queues. Every method is one atomic transaction.

    Queue ids are opaque bytes chosen by the caller (a QsCid, a ClientId, an
    alias...). Unknown ids raise :class:`NotFound` (code ``queue_not_found``).
    A queue's next sequence number is its key material's ``generation``.
    """

    def create_queue(self, queue_id: bytes, material: qc.QueueKeyMaterial, messages: list[bytes],
                     activity_ms: int) -> None:
        """Create a queue whose first messages are ``messages`` (sequence
        numbers 0, 1, ...; ``material.generation`` must be their number).
        Raises :class:`Conflict` if it exists."""

    def append(self, queue_id: bytes, build: AppendFn) -> int:
        """Append what ``build`` returns; returns the first sequence number used."""

    def append_many(self, queue_ids: list[bytes], build: AppendFn) -> list[int | None]:
        """:meth:`append` with the same ``build`` to several queues in one
        transaction (a fan-out: ``spec/performance_goals.md``, one write per
        request). Returns per queue the sequence number of the *last* payload
        appended, None for a queue that does not exist. A queue named twice is
        appended to twice, in order. If ``build`` raises, nothing changes."""

    def fetch(self, queue_id: bytes, start: int, limit: int,
              activity_ms: int) -> tuple[list[tuple[int, bytes]], int]:
        """Delete messages with a sequence number below ``start``, return up
        to ``limit`` from ``start`` on and the number left after them, and set
        the activity time."""

    def info(self, queue_id: bytes) -> QueueInfo: ...

    def delete_queue(self, queue_id: bytes) -> None: ...

    def inactive_queues(self, before_ms: int) -> list[bytes]:
        """Ids of queues whose activity time is before ``before_ms``."""

    def close(self) -> None: ...


def _not_found(queue_id: bytes) -> NotFound:
    return NotFound(f"no queue {queue_id.hex()}", code="queue_not_found")


def _exists(queue_id: bytes) -> Conflict:
    return Conflict(f"queue {queue_id.hex()} already exists", code="queue_exists")


def _built(material: qc.QueueKeyMaterial, build: AppendFn) -> tuple[list[bytes], qc.QueueKeyMaterial]:
    """Run ``build`` and check that the key material advanced with the payloads
    (sequence number and ratchet generation move together)."""
    payloads, new = build(material)
    if new.generation != material.generation + len(payloads):
        raise ValueError(f"key material generation {new.generation} after {len(payloads)} "
                         f"payloads from {material.generation}")
    return payloads, new


# --- in-memory store -------------------------------------------------------------

@dataclass
class _MemQueue:
    material: qc.QueueKeyMaterial
    activity_ms: int
    messages: collections.deque  # of (seq, payload), ascending


class MemoryQueueStore:
    """A :class:`QueueStore` in a dict (tests, and anything meant to be ephemeral)."""

    def __init__(self) -> None:
        self._queues: dict[bytes, _MemQueue] = {}
        self._lock = threading.Lock()

    def _get(self, queue_id: bytes) -> _MemQueue:
        q = self._queues.get(queue_id)
        if q is None:
            raise _not_found(queue_id)
        return q

    def create_queue(self, queue_id, material, messages, activity_ms):
        if material.generation != len(messages):
            raise ValueError("the key material's generation must be the number of initial messages")
        with self._lock:
            if queue_id in self._queues:
                raise _exists(queue_id)
            self._queues[queue_id] = _MemQueue(material, activity_ms, collections.deque(enumerate(messages)))

    def append(self, queue_id, build):
        with self._lock:
            q = self._get(queue_id)
            first = q.material.generation
            payloads, q.material = _built(q.material, build)  # may raise: nothing changed yet
            q.messages.extend((first + i, p) for i, p in enumerate(payloads))
            return first

    def append_many(self, queue_ids, build):
        with self._lock:
            state: dict[bytes, qc.QueueKeyMaterial] = {}   # material after the earlier items
            built = []
            for queue_id in queue_ids:   # build everything first: a failure changes nothing
                q = self._queues.get(queue_id)
                if q is None:
                    built.append(None)
                    continue
                material = state.get(queue_id, q.material)
                payloads, state[queue_id] = _built(material, build)
                built.append((q, material.generation, payloads))
            for entry in built:
                if entry is not None:
                    q, first, payloads = entry
                    q.messages.extend((first + i, p) for i, p in enumerate(payloads))
            for queue_id, material in state.items():
                self._queues[queue_id].material = material
            return [None if e is None else e[1] + len(e[2]) - 1 for e in built]

    def fetch(self, queue_id, start, limit, activity_ms):
        with self._lock:
            q = self._get(queue_id)
            while q.messages and q.messages[0][0] < start:
                q.messages.popleft()
            out = [q.messages[i] for i in range(min(limit, len(q.messages)))]
            q.activity_ms = activity_ms
            return out, len(q.messages) - len(out)

    def info(self, queue_id):
        with self._lock:
            q = self._get(queue_id)
            return QueueInfo(q.material.generation, q.material, q.activity_ms, len(q.messages))

    def delete_queue(self, queue_id):
        with self._lock:
            self._get(queue_id)
            del self._queues[queue_id]

    def inactive_queues(self, before_ms):
        with self._lock:
            return sorted(k for k, q in self._queues.items() if q.activity_ms < before_ms)

    def close(self) -> None:
        pass


# --- SQLite store -----------------------------------------------------------------

class SqliteQueueStore:
    """A :class:`QueueStore` in an SQLite file (WAL), tables ``<name>_queues``,
    ``<name>_ratchets`` and ``<name>_messages``, so one database file can
    hold several kinds of queue (e.g. the AS's client and alias queues).

    Layout (``docs/decisions.md``, QS queue storage layout): each queue row
    has an integer *queue number* ``qn`` (its rowid) besides the caller's
    ``queue_id``; ratchets and messages name the queue by number. The key
    material is kept in columns (``next_seq`` is its generation), so a
    fan-out reads and writes it without serialising anything; the two
    columns every enqueue changes (``next_seq``, ``ratchet_key``) are a
    narrow table of their own, written with one multi-row upsert per
    fan-out (cheaper than an ``UPDATE … FROM`` of the wide queue rows, and
    fewer pages to commit). Messages live in a rowid table
    (new rows go to the end of the table) with a ``(qn, seq)`` index: a
    fan-out inserts one row into each of many queues, and a table clustered
    by queue would dirty one page per queue. Integer keys keep both B-trees
    small and make a fan-out's row updates and inserts several times cheaper
    than 32-byte blob keys.

    A fan-out's writes are multi-row statements (up to :data:`~phoenix_ref.storage.MAX_SQL_PARAMS`
    values each), not one statement per queue: each statement costs one
    round into SQLite, and a worker thread gives up the GIL for each.

    **Key-material cache.** The store keeps a copy of the queue number and
    key material it last read or wrote per queue (at most ``max_cached``
    queues, oldest dropped first), so a busy queue's fan-out needs no read.
    It is written through: every change goes to the database in the same
    unit of work, and a rollback on the connection empties the cache
    (:class:`phoenix_ref.storage.RowCache`), so it never holds material that
    was not committed. It assumes this store is the only writer of its
    tables.

    ``db`` is a path (the store opens its own connection) or an open
    connection shared with other stores of the same service, with their
    re-entrant ``lock``; every method is then a unit inside whatever
    transaction the owner has open (:func:`phoenix_ref.storage.transaction`),
    so the owner can commit queue writes together with its own.

    Safe to call from worker threads (one connection behind a lock).
    """

    def __init__(self, db: str | os.PathLike | sqlite3.Connection, name: str = "queue",
                 lock: threading.RLock | None = None, *, max_cached: int = 100_000) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"bad table name prefix {name!r}")
        self._q, self._r, self._m = f"{name}_queues", f"{name}_ratchets", f"{name}_messages"
        self._own = not isinstance(db, sqlite3.Connection)
        self._db = open_connection(os.fspath(db)) if self._own else db
        self._lock = lock or threading.RLock()
        self._cache: RowCache[bytes, tuple[int, qc.QueueKeyMaterial]] = RowCache(self._db, max_cached)
        with self._tx() as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self._q} (qn INTEGER PRIMARY KEY, "
                         "queue_id BLOB NOT NULL UNIQUE, queue_encryption_key BLOB NOT NULL, "
                         "rotated_at_ms INTEGER NOT NULL, activity_ms INTEGER NOT NULL)")
            conn.execute(f"CREATE INDEX IF NOT EXISTS {self._q}_activity ON {self._q} (activity_ms)")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self._r} (qn INTEGER PRIMARY KEY, "
                         "next_seq INTEGER NOT NULL, ratchet_key BLOB NOT NULL)")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self._m} (qn INTEGER NOT NULL, "
                         "seq INTEGER NOT NULL, payload BLOB NOT NULL)")
            conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {self._m}_seq ON {self._m} (qn, seq)")

    def _tx(self):
        return transaction(self._db, self._lock)

    # --- key material: columns and cache ---

    _MATERIAL = "next_seq, queue_encryption_key, ratchet_key, rotated_at_ms"   # as _material takes them

    @staticmethod
    def _material(next_seq: int, queue_key: bytes, ratchet_key: bytes, rotated_at_ms: int) -> qc.QueueKeyMaterial:
        return qc.QueueKeyMaterial(bytes(queue_key), bytes(ratchet_key), next_seq, rotated_at_ms)

    def _queues(self, db, ids: list[bytes]) -> dict[bytes, tuple[int, qc.QueueKeyMaterial]]:
        """``queue_id → (qn, key material)`` for the existing queues among
        ``ids`` (distinct): from the cache, the rest with one ``SELECT … IN``
        per chunk."""
        found, missing = self._cache.lookup(ids)
        for chunk in chunks(missing):
            for queue_id, qn, *columns in db.execute(
                    f"SELECT q.queue_id, q.qn, {self._MATERIAL} FROM {self._q} q JOIN {self._r} r ON r.qn = q.qn "
                    f"WHERE q.queue_id IN ({','.join('?' * len(chunk))})", chunk):
                entry = found[queue_id] = (qn, self._material(*columns))
                self._cache.put(queue_id, entry)
        return found

    def _number(self, db, queue_id: bytes) -> int:
        """The queue number of a queue; :class:`NotFound` if there is none."""
        row = db.execute(f"SELECT qn FROM {self._q} WHERE queue_id=?", (queue_id,)).fetchone()
        if row is None:
            raise _not_found(queue_id)
        return row[0]

    def _store_materials(self, db, updated: list[tuple[bytes, int, qc.QueueKeyMaterial, qc.QueueKeyMaterial]]) -> None:
        """Write the key material of existing queues ``(queue_id, qn, old,
        new)``: the ratchet of every queue with one multi-row upsert per
        chunk; the queue rows only where more than the ratchet changed
        (a rotation or a new queue encryption key)."""
        ratchets, other = [], []
        for _, qn, old, new in updated:
            ratchets.append((qn, new.generation, new.ratchet_key))
            if new.queue_encryption_key != old.queue_encryption_key or new.rotated_at_ms != old.rotated_at_ms:
                other.append((qn, new.queue_encryption_key, new.rotated_at_ms))
        for chunk in chunks(ratchets, 3):
            db.execute(f"INSERT OR FAIL INTO {self._r} VALUES {_placeholders(len(chunk), 3)} ON CONFLICT (qn) DO UPDATE "
                       "SET next_seq = excluded.next_seq, ratchet_key = excluded.ratchet_key",
                       [x for row in chunk for x in row])
        for chunk in chunks(other, 3):
            db.execute(f"UPDATE {self._q} SET queue_encryption_key = v.column2, rotated_at_ms = v.column3 FROM "
                       f"(VALUES {_placeholders(len(chunk), 3)}) AS v WHERE qn = v.column1",
                       [x for row in chunk for x in row])
        for queue_id, qn, _, new in updated:
            self._cache.put(queue_id, (qn, new))

    def _insert_messages(self, db, messages: list[tuple[int, int, bytes]]) -> None:
        """Insert ``(qn, seq, payload)`` rows, a multi-row INSERT per chunk.

        Both multi-row writes of a fan-out (this and the ratchet upsert of
        :meth:`_store_materials`) say ``OR FAIL``: a failing row stops the
        statement without undoing the rows before it. Nothing relies on
        that undo, since every caller is inside a unit of work that rolls back
        as a whole on any error (:func:`~phoenix_ref.storage.transaction`).
        Under the default ``ABORT``, SQLite must be able to undo the
        statement alone, so it first copies every page the statement changes
        into a statement journal (a temporary file once past 64 KiB): timed
        alone with 333 rows each, the two statements took about twice the
        CPU that way."""
        for chunk in chunks(messages, 3):
            db.execute(f"INSERT OR FAIL INTO {self._m} VALUES {_placeholders(len(chunk), 3)}",
                       [x for row in chunk for x in row])

    # --- QueueStore ---

    def create_queue(self, queue_id, material, messages, activity_ms):
        if material.generation != len(messages):
            raise ValueError("the key material's generation must be the number of initial messages")
        with self._tx() as db:
            if db.execute(f"SELECT 1 FROM {self._q} WHERE queue_id=?", (queue_id,)).fetchone():
                raise _exists(queue_id)
            qn = db.execute(f"INSERT INTO {self._q} (queue_id, queue_encryption_key, rotated_at_ms, activity_ms) "
                            "VALUES (?,?,?,?)", (queue_id, material.queue_encryption_key, material.rotated_at_ms,
                                                 activity_ms)).lastrowid
            db.execute(f"INSERT INTO {self._r} VALUES (?,?,?)", (qn, material.generation, material.ratchet_key))
            self._insert_messages(db, [(qn, i, p) for i, p in enumerate(messages)])
            self._cache.put(queue_id, (qn, material))

    def append(self, queue_id, build):
        with self._tx() as db:
            entry = self._queues(db, [queue_id]).get(queue_id)
            if entry is None:
                raise _not_found(queue_id)
            qn, material = entry
            first = material.generation
            payloads, new = _built(material, build)
            self._store_materials(db, [(queue_id, qn, material, new)])
            self._insert_messages(db, [(qn, first + i, p) for i, p in enumerate(payloads)])
            return first

    def append_many(self, queue_ids, build):
        # Statements per fan-out, not per queue: the key material of the
        # queues not in the cache in one SELECT (per chunk of ids), then
        # multi-row statements for the new messages and the new key material.
        with self._tx() as db:
            found = self._queues(db, list(dict.fromkeys(queue_ids)))
            state = dict(found)
            out: list[int | None] = []
            messages = []
            for queue_id in queue_ids:
                entry = state.get(queue_id)
                if entry is None:
                    out.append(None)
                    continue
                qn, material = entry
                seq = material.generation
                payloads, new = _built(material, build)
                state[queue_id] = (qn, new)
                for payload in payloads:
                    messages.append((qn, seq, payload))
                    seq += 1
                out.append(seq - 1)
            self._store_materials(db, [(queue_id, qn, found[queue_id][1], new)
                                       for queue_id, (qn, new) in state.items()])
            self._insert_messages(db, messages)
        return out

    def fetch(self, queue_id, start, limit, activity_ms):
        start, limit = min(start, _SQLITE_MAX), min(limit, _SQLITE_MAX)
        with self._tx() as db:
            qn = self._number(db, queue_id)
            db.execute(f"DELETE FROM {self._m} WHERE qn=? AND seq<?", (qn, start))
            rows = db.execute(f"SELECT seq, payload FROM {self._m} WHERE qn=? ORDER BY seq LIMIT ?",
                              (qn, limit)).fetchall()
            (total,) = db.execute(f"SELECT COUNT(*) FROM {self._m} WHERE qn=?", (qn,)).fetchone()
            db.execute(f"UPDATE {self._q} SET activity_ms=? WHERE qn=?", (activity_ms, qn))
            return [(s, bytes(p)) for s, p in rows], total - len(rows)

    def info(self, queue_id):
        with self._tx() as db:
            row = db.execute(f"SELECT q.qn, {self._MATERIAL}, activity_ms FROM {self._q} q "
                             f"JOIN {self._r} r ON r.qn = q.qn WHERE queue_id=?", (queue_id,)).fetchone()
            if row is None:
                raise _not_found(queue_id)
            (count,) = db.execute(f"SELECT COUNT(*) FROM {self._m} WHERE qn=?", (row[0],)).fetchone()
            return QueueInfo(row[1], self._material(*row[1:5]), row[5], count)

    def delete_queue(self, queue_id):
        with self._tx() as db:
            qn = self._number(db, queue_id)
            db.execute(f"DELETE FROM {self._m} WHERE qn=?", (qn,))
            db.execute(f"DELETE FROM {self._r} WHERE qn=?", (qn,))
            db.execute(f"DELETE FROM {self._q} WHERE qn=?", (qn,))
            self._cache.discard(queue_id)

    def inactive_queues(self, before_ms):
        with self._tx() as db:
            rows = db.execute(f"SELECT queue_id FROM {self._q} WHERE activity_ms<? ORDER BY queue_id",
                              (before_ms,)).fetchall()
            return [bytes(r[0]) for r in rows]

    def close(self) -> None:
        if self._own:
            with self._lock:
                self._db.close()


@functools.lru_cache(maxsize=64)
def _placeholders(rows: int, columns: int) -> str:
    """``(?,…,?),(?,…,?)…``: ``rows`` groups of ``columns`` parameters."""
    return ",".join(["(" + ",".join("?" * columns) + ")"] * rows)


# --- the core -------------------------------------------------------------------------

class Queues:
    """Queue operations with at-rest encryption, over a :class:`QueueStore`.

    Each method is one store transaction. Errors: :class:`NotFound` for an
    unknown queue, :class:`Conflict` when creating an existing one,
    :class:`~phoenix_ref.errors.Malformed` for bad keys in a request.
    """

    def __init__(self, store: QueueStore, config: QueueConfig = QueueConfig()) -> None:
        self.store = store
        self.config = config

    def create(self, queue_id: bytes, queue_encryption_key: bytes, now_ms: int,
               *, initial_ratchet_key: bytes | None = None) -> None:
        """Create a queue. Without ``initial_ratchet_key`` (QS) the service samples
        it and message 0 carries it sealed to the owner; with it (AS
        ``initial_queue_ratchet_key``) the queue starts empty at sequence number 0."""
        stamp = self.config.rotation_stamp(now_ms)
        if initial_ratchet_key is None:
            reset, material = qc.new_queue(queue_encryption_key, stamp)
            messages = [encode(reset)]
        else:
            material = qc.queue_from_ratchet_key(queue_encryption_key, initial_ratchet_key, stamp)
            messages = []
        self.store.create_queue(queue_id, material, messages, self.config.activity(now_ms))

    def _append(self, queue_id: bytes, step) -> int:
        """Run ``step(material, seq) -> (QueueMessage, material)`` in one transaction;
        returns the sequence number it got."""
        def build(material: qc.QueueKeyMaterial) -> tuple[list[bytes], qc.QueueKeyMaterial]:
            msg, material = step(material, material.generation)
            return [encode(msg)], material
        return self.store.append(queue_id, build)

    def _enqueue_step(self, plaintext: bytes, now_ms: int) -> AppendFn:
        """The AppendFn of one enqueue: the message, preceded by a ratchet key
        update when the rotation interval has passed."""
        interval = self.config.rotation_interval_ms
        stamp = self.config.rotation_stamp(now_ms)

        def build(material: qc.QueueKeyMaterial) -> tuple[list[bytes], qc.QueueKeyMaterial]:
            out = []
            if qc.rotation_due(material, now_ms, interval):
                update, material = qc.rotate_ratchet_key(material, material.generation, stamp)
                out.append(encode(update))
            msg, material = qc.encrypt_for_queue(material, material.generation, plaintext)
            out.append(qc.encode_queue_message(msg))
            return out, material
        return build

    def enqueue(self, queue_id: bytes, plaintext: bytes, now_ms: int) -> int:
        """Encrypt and enqueue ``plaintext``; returns its sequence number. If the
        rotation interval has passed, a ratchet key update goes in just before it."""
        (seq,) = self.enqueue_many([queue_id], plaintext, now_ms)
        if seq is None:
            raise _not_found(queue_id)
        return seq

    def enqueue_many(self, queue_ids: list[bytes], plaintext: bytes, now_ms: int) -> list[int | None]:
        """:meth:`enqueue` the same plaintext into several queues in one store
        transaction; the sequence number per queue, None where it does not exist."""
        return self.store.append_many(queue_ids, self._enqueue_step(plaintext, now_ms))

    def rotate(self, queue_id: bytes, now_ms: int) -> int:
        """Force a ratchet key update (``#key-updates``); returns its sequence number."""
        stamp = self.config.rotation_stamp(now_ms)
        return self._append(queue_id, lambda m, s: qc.rotate_ratchet_key(m, s, stamp))

    def set_ratchet_key(self, queue_id: bytes, ratchet_key: bytes, now_ms: int) -> int:
        """Owner-chosen ratchet key from the returned sequence number on."""
        stamp = self.config.rotation_stamp(now_ms)
        return self._append(queue_id, lambda m, s: qc.set_ratchet_key(m, s, ratchet_key, stamp))

    def set_queue_encryption_key(self, queue_id: bytes, public_key: bytes, now_ms: int) -> int:
        """New queue encryption key; an update sealed to it is enqueued at once."""
        stamp = self.config.rotation_stamp(now_ms)
        return self._append(queue_id, lambda m, s: qc.set_queue_encryption_key(m, s, public_key, stamp))

    def dequeue(self, queue_id: bytes, sequence_number_start: int, max_message_number: int,
                now_ms: int) -> DequeueResult:
        """``#dequeue-messages`` (QS and AS): delete older messages, return at
        most min(remaining, ``max_message_number``, configured maximum)."""
        limit = min(max_message_number, self.config.max_messages)
        rows, remaining = self.store.fetch(queue_id, sequence_number_start, limit,
                                           self.config.activity(now_ms))
        return DequeueResult([decode(qc.QueueMessage, p) for _, p in rows], remaining)

    def delete(self, queue_id: bytes) -> None:
        self.store.delete_queue(queue_id)

    def info(self, queue_id: bytes) -> QueueInfo:
        return self.store.info(queue_id)

    def inactive(self, before_ms: int) -> list[bytes]:
        """Queues not fetched from since ``before_ms`` (for the maximal client record age)."""
        return self.store.inactive_queues(before_ms)
