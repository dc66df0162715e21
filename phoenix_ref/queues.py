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
first millisecond of that UTC month (:func:`month_start_ms`); QS queues keep
milliseconds.

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
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from . import queue_crypto as qc
from .codec import U64, decode, encode, struct, vec
from .errors import Conflict, NotFound

__all__ = [
    "ActivityPrecision", "QueueConfig", "QueueInfo", "DequeueResult", "DequeueMessagesResponse",
    "AppendFn", "QueueStore", "MemoryQueueStore", "SqliteQueueStore", "Queues", "month_start_ms",
    "DEFAULT_MAX_MESSAGES",
]

DEFAULT_MAX_MESSAGES = 500  # spec/queuing_service.md#qs-configuration-options
_SQLITE_MAX = (1 << 63) - 1  # SQLite INTEGER is signed 64-bit


class ActivityPrecision(enum.Enum):
    MILLISECOND = "ms"  # QS client records
    MONTH = "month"     # AS direct queues: year and month only


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
    interval (``None``: no periodic rotation).
    """
    max_messages: int = DEFAULT_MAX_MESSAGES
    rotation_interval_ms: int | None = 24 * 3600 * 1000
    activity_precision: ActivityPrecision = ActivityPrecision.MILLISECOND

    def activity(self, now_ms: int) -> int:
        return month_start_ms(now_ms) if self.activity_precision is ActivityPrecision.MONTH else now_ms


@dataclass(frozen=True)
class QueueInfo:
    next_sequence_number: int
    key_material: bytes
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


# A store calls ``build(next_sequence_number, key_material)`` inside its
# transaction; it returns the payloads to store at next, next+1, ... and the
# key material to store in place of the old one.
AppendFn = Callable[[int, bytes], tuple[list[bytes], bytes]]


class QueueStore(Protocol):
    """Storage of queues. Every method is one atomic transaction.

    Queue ids are opaque bytes chosen by the caller (a QsCid, a ClientId, an
    alias...). Unknown ids raise :class:`NotFound` (code ``queue_not_found``).
    """

    def create_queue(self, queue_id: bytes, key_material: bytes, messages: list[bytes],
                     activity_ms: int) -> None:
        """Create a queue whose first messages are ``messages`` (sequence
        numbers 0, 1, ...). Raises :class:`Conflict` if it exists."""

    def append(self, queue_id: bytes, build: AppendFn) -> int:
        """Append what ``build`` returns; returns the first sequence number used."""

    def append_many(self, items: list[tuple[bytes, AppendFn]]) -> list[int | None]:
        """:meth:`append` to several queues in one transaction (a fan-out:
        ``spec/performance_goals.md``, one write per request). Returns the
        first sequence number used per item, None for a queue that does not exist."""

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


# --- in-memory store -------------------------------------------------------------

@dataclass
class _MemQueue:
    next_seq: int
    key_material: bytes
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

    def create_queue(self, queue_id, key_material, messages, activity_ms):
        with self._lock:
            if queue_id in self._queues:
                raise _exists(queue_id)
            self._queues[queue_id] = _MemQueue(len(messages), key_material, activity_ms,
                                               collections.deque(enumerate(messages)))

    def append(self, queue_id, build):
        with self._lock:
            q = self._get(queue_id)
            payloads, material = build(q.next_seq, q.key_material)  # may raise: nothing changed yet
            first = q.next_seq
            for i, p in enumerate(payloads):
                q.messages.append((first + i, p))
            q.next_seq = first + len(payloads)
            q.key_material = material
            return first

    def append_many(self, items):
        with self._lock:
            built = []
            for queue_id, build in items:   # build everything first: a failure changes nothing
                q = self._queues.get(queue_id)
                built.append(None if q is None else (q, q.next_seq, *build(q.next_seq, q.key_material)))
            out = []
            for entry in built:
                if entry is None:
                    out.append(None)
                    continue
                q, first, payloads, material = entry
                q.messages.extend((first + i, p) for i, p in enumerate(payloads))
                q.next_seq, q.key_material = first + len(payloads), material
                out.append(first)
            return out

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
            return QueueInfo(q.next_seq, q.key_material, q.activity_ms, len(q.messages))

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
    """A :class:`QueueStore` in an SQLite file (WAL), tables ``<name>_queues``
    and ``<name>_messages``, so one database file can hold several kinds of
    queue (e.g. the AS's client and alias queues).

    Safe to call from worker threads (one connection behind a lock).
    """

    def __init__(self, path: str | os.PathLike, name: str = "queue") -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"bad table name prefix {name!r}")
        self._q, self._m = f"{name}_queues", f"{name}_messages"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._tx() as db:
            db.execute(f"CREATE TABLE IF NOT EXISTS {self._q} (queue_id BLOB PRIMARY KEY, "
                       "next_seq INTEGER NOT NULL, key_material BLOB NOT NULL, "
                       "activity_ms INTEGER NOT NULL) WITHOUT ROWID")
            db.execute(f"CREATE TABLE IF NOT EXISTS {self._m} (queue_id BLOB NOT NULL, "
                       "seq INTEGER NOT NULL, payload BLOB NOT NULL, "
                       "PRIMARY KEY (queue_id, seq)) WITHOUT ROWID")
            db.execute(f"CREATE INDEX IF NOT EXISTS {self._q}_activity ON {self._q} (activity_ms)")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _row(self, db, queue_id) -> tuple[int, bytes, int]:
        row = db.execute(f"SELECT next_seq, key_material, activity_ms FROM {self._q} WHERE queue_id=?",
                         (queue_id,)).fetchone()
        if row is None:
            raise _not_found(queue_id)
        return row

    def create_queue(self, queue_id, key_material, messages, activity_ms):
        with self._tx() as db:
            if db.execute(f"SELECT 1 FROM {self._q} WHERE queue_id=?", (queue_id,)).fetchone():
                raise _exists(queue_id)
            db.execute(f"INSERT INTO {self._q} VALUES (?,?,?,?)",
                       (queue_id, len(messages), key_material, activity_ms))
            db.executemany(f"INSERT INTO {self._m} VALUES (?,?,?)",
                           [(queue_id, i, p) for i, p in enumerate(messages)])

    def append(self, queue_id, build):
        with self._tx() as db:
            first, material, _ = self._row(db, queue_id)
            payloads, new_material = build(first, material)
            db.executemany(f"INSERT INTO {self._m} VALUES (?,?,?)",
                           [(queue_id, first + i, p) for i, p in enumerate(payloads)])
            db.execute(f"UPDATE {self._q} SET next_seq=?, key_material=? WHERE queue_id=?",
                       (first + len(payloads), new_material, queue_id))
            return first

    def append_many(self, items):
        out: list[int | None] = []
        with self._tx() as db:
            rows = []
            for queue_id, build in items:
                row = db.execute(f"SELECT next_seq, key_material FROM {self._q} WHERE queue_id=?",
                                 (queue_id,)).fetchone()
                if row is None:
                    out.append(None)
                    continue
                first, material = row
                payloads, new_material = build(first, material)
                rows += [(queue_id, first + i, p) for i, p in enumerate(payloads)]
                db.execute(f"UPDATE {self._q} SET next_seq=?, key_material=? WHERE queue_id=?",
                           (first + len(payloads), new_material, queue_id))
                out.append(first)
            db.executemany(f"INSERT INTO {self._m} VALUES (?,?,?)", rows)
        return out

    def fetch(self, queue_id, start, limit, activity_ms):
        start, limit = min(start, _SQLITE_MAX), min(limit, _SQLITE_MAX)
        with self._tx() as db:
            self._row(db, queue_id)
            db.execute(f"DELETE FROM {self._m} WHERE queue_id=? AND seq<?", (queue_id, start))
            rows = db.execute(f"SELECT seq, payload FROM {self._m} WHERE queue_id=? "
                              "ORDER BY seq LIMIT ?", (queue_id, limit)).fetchall()
            (total,) = db.execute(f"SELECT COUNT(*) FROM {self._m} WHERE queue_id=?",
                                  (queue_id,)).fetchone()
            db.execute(f"UPDATE {self._q} SET activity_ms=? WHERE queue_id=?", (activity_ms, queue_id))
            return [(s, bytes(p)) for s, p in rows], total - len(rows)

    def info(self, queue_id):
        with self._tx() as db:
            next_seq, material, activity = self._row(db, queue_id)
            (count,) = db.execute(f"SELECT COUNT(*) FROM {self._m} WHERE queue_id=?",
                                  (queue_id,)).fetchone()
            return QueueInfo(next_seq, bytes(material), activity, count)

    def delete_queue(self, queue_id):
        with self._tx() as db:
            self._row(db, queue_id)
            db.execute(f"DELETE FROM {self._m} WHERE queue_id=?", (queue_id,))
            db.execute(f"DELETE FROM {self._q} WHERE queue_id=?", (queue_id,))

    def inactive_queues(self, before_ms):
        with self._tx() as db:
            rows = db.execute(f"SELECT queue_id FROM {self._q} WHERE activity_ms<? ORDER BY queue_id",
                              (before_ms,)).fetchall()
            return [bytes(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


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
        if initial_ratchet_key is None:
            reset, material = qc.new_queue(queue_encryption_key, now_ms)
            messages = [encode(reset)]
        else:
            material = qc.queue_from_ratchet_key(queue_encryption_key, initial_ratchet_key, now_ms)
            messages = []
        self.store.create_queue(queue_id, encode(material), messages, self.config.activity(now_ms))

    def _append(self, queue_id: bytes, step) -> int:
        """Run ``step(material, seq) -> (QueueMessage, material)`` in one transaction;
        returns the sequence number it got."""
        def build(seq: int, raw: bytes) -> tuple[list[bytes], bytes]:
            msg, material = step(decode(qc.QueueKeyMaterial, raw), seq)
            return [encode(msg)], encode(material)
        return self.store.append(queue_id, build)

    def _enqueue_step(self, plaintext: bytes, now_ms: int, built: list[int]) -> AppendFn:
        """The AppendFn of one enqueue; ``built[0]`` tells how many messages it
        produced (1, or 2 with a ratchet key update first)."""
        interval = self.config.rotation_interval_ms

        def build(seq: int, raw: bytes) -> tuple[list[bytes], bytes]:
            material = decode(qc.QueueKeyMaterial, raw)
            out = []
            if qc.rotation_due(material, now_ms, interval):
                update, material = qc.rotate_ratchet_key(material, seq, now_ms)
                out.append(encode(update))
                seq += 1
            msg, material = qc.encrypt_for_queue(material, seq, plaintext)
            out.append(encode(msg))
            built[0] = len(out)
            return out, encode(material)
        return build

    def enqueue(self, queue_id: bytes, plaintext: bytes, now_ms: int) -> int:
        """Encrypt and enqueue ``plaintext``; returns its sequence number. If the
        rotation interval has passed, a ratchet key update goes in just before it."""
        built = [0]
        first = self.store.append(queue_id, self._enqueue_step(plaintext, now_ms, built))
        return first + built[0] - 1

    def enqueue_many(self, queue_ids: list[bytes], plaintext: bytes, now_ms: int) -> list[int | None]:
        """:meth:`enqueue` the same plaintext into several queues in one store
        transaction; the sequence number per queue, None where it does not exist."""
        counts = [[0] for _ in queue_ids]
        firsts = self.store.append_many([(q, self._enqueue_step(plaintext, now_ms, c))
                                         for q, c in zip(queue_ids, counts)])
        return [None if f is None else f + c[0] - 1 for f, c in zip(firsts, counts)]

    def rotate(self, queue_id: bytes, now_ms: int) -> int:
        """Force a ratchet key update (``#key-updates``); returns its sequence number."""
        return self._append(queue_id, lambda m, s: qc.rotate_ratchet_key(m, s, now_ms))

    def set_ratchet_key(self, queue_id: bytes, ratchet_key: bytes, now_ms: int) -> int:
        """Owner-chosen ratchet key from the returned sequence number on."""
        return self._append(queue_id, lambda m, s: qc.set_ratchet_key(m, s, ratchet_key, now_ms))

    def set_queue_encryption_key(self, queue_id: bytes, public_key: bytes, now_ms: int) -> int:
        """New queue encryption key; an update sealed to it is enqueued at once."""
        return self._append(queue_id, lambda m, s: qc.set_queue_encryption_key(m, s, public_key, now_ms))

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
