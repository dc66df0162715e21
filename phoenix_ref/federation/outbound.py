"""Durable per-destination outbound federation queues (GUIDE §3).

A homeserver that must deliver something to another homeserver — for the
QS, the one signed ``QsToQsMessage`` per remote domain of a fan-out
(``spec/queuing_service.md#federated-qs-to-qs-communication``) — does not
send it inline. It appends the message to the destination's queue in its
own store, in the same transaction as the rest of the request when the
store allows, and returns. One sender task per destination, all inside the
homeserver's Trio nursery, then delivers that queue:

* **in order**: a destination's queue is sent head first; the next
  messages leave only once the head is delivered or refused for good;
* **in batches when there is a backlog**: an attempt carries every message
  waiting when it starts, up to :class:`BatchLimits` (count and bytes) —
  one request for several messages when the caller gives a ``send_batch``
  (the QS: docs/decisions.md, "QS-to-QS batches"). A lone message goes at
  once; batches form from messages that queued while the previous attempt
  was under way or the destination was unreachable, and, while a backlog
  lasts (the previous attempt carried more than one message), during a
  wait before the next read that ends once enough messages wait
  (``BatchLimits.linger_s`` and ``gather``; decision "Federation batches
  linger under a backlog"). Each message of a batch
  gets its own outcome, so one refusal does not sink the others;
* **independently**: every destination has its own task, so a destination
  that is down (a net-split, ``spec/federation/use_cases.md``) only delays its
  own messages;
* **with backoff**: a connection error, a timeout or a 5xx answer waits an
  exponentially growing delay with jitter before the next try; a 429 (and a
  503) waits the ``Retry-After`` the receiver gave, when it gave one;
* **durably**: a message leaves the store only after a definite answer, so
  a restart resumes every pending queue (:meth:`OutboundSender.run` starts a
  task for every destination that still has messages). A message may thus
  be sent twice (crash after delivery, before removal): receivers
  deduplicate by message id;
* **refusals kept**: a message the destination refuses for good (a 4xx)
  moves to a dead-letter table with the answer, so an operator can see it;
* **not forever**: a message still undelivered ``max_age_ms`` after it was
  queued (``[limits] federation_outbound_max_age_s``) moves to the dead
  letters with the code ``expired`` instead of being sent: by the sender
  before an attempt, and by the homeserver's sweeper (:meth:`OutboundStore.expire`)
  for messages waiting behind a head or in a parked queue;
* **bugs parked, not retried forever**: an exception that is no answer and
  no network failure is logged with its traceback, counted, and parks its
  destination until an operator unparks it or the process restarts
  (:class:`OutboundSender`; ``phoenix-ref admin … outbound`` lists pending counts,
  parkings and dead letters, :mod:`.outbound_admin`).

The module knows nothing about what it carries: the caller provides a
``send`` coroutine that performs one attempt and returns how it went
(:class:`Delivered`, :class:`RetryLater` or :class:`Rejected`) or raises,
and optionally a ``send_batch`` for several items, which returns one
outcome for all or one per item;
:func:`outcome_of_failure` says what a federation answer or failure means.
The QS's ``send`` frames and signs the stored payload at every attempt, so
the timestamp a receiver checks is that of the attempt, not of the enqueue.

Storage: :class:`MemoryOutboundStore` for tests and :class:`SqliteOutboundStore`
(stdlib ``sqlite3``, tables ``outbound_queue``, ``outbound_dead_letters``,
``outbound_parked``), which can share the connection of a service store so
that queueing happens in that store's transaction, and which keeps the
payloads sealed at rest (``spec/queuing_service.md#qs-state``, "QS-to-QS
queues"; :mod:`.outbound_crypto`).
"""

from __future__ import annotations

import logging
import math
import random as _random
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Collection, Protocol, Sequence, TypeVar

import trio

from ..storage import open_connection, purge_deleted, transaction
from .client import FederationError, NotFederated, RemoteRefused
from .outbound_crypto import SEAL_OVERHEAD, OutboundKeyError, OutboundKeys

__all__ = [
    "OutboundItem", "OutboundStore", "MemoryOutboundStore", "SqliteOutboundStore", "Parked", "DeadLetter",
    "Delivered", "RetryLater", "Rejected", "Outcome", "outcome_of_failure", "BackoffPolicy", "OutboundSender",
    "expired_rejection", "EXPIRED", "BatchLimits", "SendBatchFn",
]

#: The error code of a dead letter that was never answered: it grew too old.
EXPIRED = "expired"

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class OutboundItem:
    """One queued message: ``seq`` orders a destination's queue."""
    destination: str
    seq: int
    message_id: bytes
    payload: bytes
    enqueued_ms: int


def _in_order(outcomes: list["Outcome"]) -> list["Outcome"]:
    """The outcomes of one attempt as the sender acts on them: from the
    first :class:`RetryLater` on, every item is retried — one the receiver
    took after it will be a replay, answered with its first answer — so
    the queue leaves in order."""
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, RetryLater):
            behind = RetryLater(f"behind a message to retry ({outcome.reason})", outcome.retry_after)
            return outcomes[:i + 1] + [behind] * (len(outcomes) - i - 1)
    return outcomes


def _within(items: Sequence[T], max_bytes: int, size: Callable[[T], int]) -> list[T]:
    """The longest prefix of ``items`` whose sizes add up to at most
    ``max_bytes`` — but at least the first item, whatever its size (a
    message larger than the bound travels alone, as it would unbatched)."""
    out, total = [], 0
    for item in items:
        total += size(item)
        if out and total > max_bytes:
            break
        out.append(item)
    return out


@dataclass(frozen=True)
class Parked:
    """Why and since when a destination's sender stopped (see :class:`OutboundSender`)."""
    reason: str
    parked_ms: int


@dataclass(frozen=True)
class DeadLetter:
    """A message its destination refused for good, with the refusal."""
    destination: str
    message_id: bytes
    enqueued_ms: int
    rejected_ms: int
    status: int
    code: str | None
    message: str


class OutboundStore(Protocol):
    """The storage interface of outbound queues. Methods are synchronous
    (they run in a worker thread, GUIDE §4)."""

    def append(self, destination: str, message_id: bytes, payload: bytes, now_ms: int) -> int:
        """Append to ``destination``'s queue; return the item's sequence number."""

    def head(self, destination: str) -> OutboundItem | None:
        """The oldest pending item for ``destination``, or None."""

    def remove(self, destination: str, seq: int) -> OutboundItem | None:
        """Drop a delivered item; return the new head of ``destination``'s
        queue (one call where a sender would otherwise make two)."""

    def dead_letter(self, destination: str, seq: int, rejected: "Rejected", now_ms: int) -> OutboundItem | None:
        """Move a refused item to the dead letters with the refusal, in one
        unit; return the new head of ``destination``'s queue."""

    def batch(self, destination: str, max_items: int, max_bytes: int) -> list[OutboundItem]:
        """The oldest pending items of ``destination``, in order: at most
        ``max_items``, and no more than fit in ``max_bytes`` of payload —
        but always the head, whatever its size. Empty if none is pending."""

    def settle(self, destination: str, delivered: list[int], rejected: list[tuple[int, "Rejected"]], now_ms: int,
               max_items: int, max_bytes: int) -> list[OutboundItem]:
        """In one unit: drop the ``delivered`` items and move the
        ``rejected`` ones (seq, refusal) to the dead letters; return the
        next :meth:`batch` (one call where a sender would otherwise make two)."""

    def expire(self, before_ms: int, rejected: "Rejected", now_ms: int, keep: dict[str, Collection[int]]) -> int:
        """Move every item queued before ``before_ms`` to the dead letters with
        ``rejected`` as the reason, except the items ``keep[destination]`` of
        each destination (those its sender holds); return how many moved."""

    def destinations(self) -> list[str]:
        """Every destination that has at least one pending item."""

    def park(self, destination: str, reason: str, now_ms: int) -> None:
        """Record that ``destination``'s sender stopped on a programming error."""

    def unpark(self, destination: str) -> bool:
        """Forget the parking of ``destination``; whether it was parked."""

    def parked(self) -> dict[str, Parked]:
        """The parked destinations."""


class MemoryOutboundStore:
    """In-memory :class:`OutboundStore` (tests)."""

    #: Calls are cheap and never block: no worker thread needed.
    needs_thread = False

    def __init__(self) -> None:
        self._queues: dict[str, list[OutboundItem]] = {}
        self._next = 1
        self._lock = threading.Lock()
        self.dead_letters: list[DeadLetter] = []
        self._parked: dict[str, Parked] = {}

    def append(self, destination: str, message_id: bytes, payload: bytes, now_ms: int) -> int:
        with self._lock:
            seq = self._next
            self._next += 1
            self._queues.setdefault(destination, []).append(
                OutboundItem(destination, seq, message_id, payload, now_ms))
            return seq

    def head(self, destination: str) -> OutboundItem | None:
        with self._lock:
            q = self._queues.get(destination)
            return q[0] if q else None

    def remove(self, destination: str, seq: int) -> OutboundItem | None:
        with self._lock:
            q = self._queues[destination] = [i for i in self._queues.get(destination, []) if i.seq != seq]
            return q[0] if q else None

    def dead_letter(self, destination: str, seq: int, rejected: "Rejected", now_ms: int) -> OutboundItem | None:
        with self._lock:
            for item in self._queues.get(destination, []):
                if item.seq == seq:
                    self.dead_letters.append(DeadLetter(destination, item.message_id, item.enqueued_ms, now_ms,
                                                        rejected.status, rejected.code, rejected.reason))
        return self.remove(destination, seq)

    def batch(self, destination: str, max_items: int, max_bytes: int) -> list[OutboundItem]:
        with self._lock:
            return _within(self._queues.get(destination, [])[:max_items], max_bytes, lambda i: len(i.payload))

    def settle(self, destination: str, delivered: list[int], rejected: list[tuple[int, "Rejected"]], now_ms: int,
               max_items: int, max_bytes: int) -> list[OutboundItem]:
        with self._lock:
            queue = self._queues.get(destination, [])
            by_seq = {i.seq: i for i in queue}
            for seq, r in rejected:
                item = by_seq.get(seq)
                if item is not None:
                    self.dead_letters.append(DeadLetter(destination, item.message_id, item.enqueued_ms, now_ms,
                                                        r.status, r.code, r.reason))
            gone = set(delivered) | {seq for seq, _ in rejected}
            self._queues[destination] = [i for i in queue if i.seq not in gone]
        return self.batch(destination, max_items, max_bytes)

    def expire(self, before_ms: int, rejected: "Rejected", now_ms: int, keep: dict[str, Collection[int]]) -> int:
        with self._lock:
            n = 0
            for destination, queue in self._queues.items():
                old = [i for i in queue if i.enqueued_ms < before_ms and i.seq not in keep.get(destination, ())]
                self.dead_letters += [DeadLetter(destination, i.message_id, i.enqueued_ms, now_ms, rejected.status,
                                                 rejected.code, rejected.reason) for i in old]
                self._queues[destination] = [i for i in queue if i not in old]
                n += len(old)
            return n

    def destinations(self) -> list[str]:
        with self._lock:
            return sorted(d for d, q in self._queues.items() if q)

    def park(self, destination: str, reason: str, now_ms: int) -> None:
        with self._lock:
            self._parked[destination] = Parked(reason, now_ms)

    def unpark(self, destination: str) -> bool:
        with self._lock:
            return self._parked.pop(destination, None) is not None

    def parked(self) -> dict[str, Parked]:
        with self._lock:
            return dict(self._parked)

    def queue_summary(self) -> dict[str, tuple[int, int]]:
        """Per destination with pending items: (how many, oldest ``enqueued_ms``)."""
        with self._lock:
            return {d: (len(q), min(i.enqueued_ms for i in q)) for d, q in self._queues.items() if q}


class SqliteOutboundStore:
    """:class:`OutboundStore` in SQLite tables, payloads sealed at rest.

    ``conn`` is either a path (the store opens its own connection, WAL mode)
    or an open ``sqlite3.Connection`` owned by a service store; in the latter
    case ``lock`` must be that store's re-entrant lock, and an append made
    while the owner has a transaction open (:func:`phoenix_ref.storage.transaction`)
    commits or rolls back with it.

    ``keys`` seal and open the payloads (:mod:`.outbound_crypto`); a store
    opened without them (the operator's report) can list, count, park and
    unpark, and raises :class:`~.outbound_crypto.OutboundKeyError` where a
    payload is needed. Rows of a file written before payloads were sealed
    are sealed when a store with keys opens it.
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS outbound_queue (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,
        message_id BLOB NOT NULL,
        payload BLOB NOT NULL,
        enqueued_ms INTEGER NOT NULL,
        key_id BLOB NOT NULL
    );
    CREATE INDEX IF NOT EXISTS outbound_queue_dest ON outbound_queue (destination, seq);
    CREATE TABLE IF NOT EXISTS outbound_dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,
        message_id BLOB NOT NULL,
        key_id BLOB,
        payload BLOB NOT NULL,
        enqueued_ms INTEGER NOT NULL,
        rejected_ms INTEGER NOT NULL,
        status INTEGER NOT NULL,
        code TEXT,
        message TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS outbound_dead_letters_dest ON outbound_dead_letters (destination, id);
    CREATE TABLE IF NOT EXISTS outbound_parked (
        destination TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        parked_ms INTEGER NOT NULL
    );
    """

    needs_thread = True

    def __init__(self, conn: str | sqlite3.Connection, lock: threading.RLock | None = None, *,
                 keys: OutboundKeys | None):
        self._own = not isinstance(conn, sqlite3.Connection)
        self._conn = open_connection(conn) if self._own else conn
        self._lock = lock or threading.RLock()
        self._keys = keys
        with self._tx() as db:   # statement by statement: executescript would commit the owner's transaction
            for statement in self.SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def close(self) -> None:
        if self._own:
            self._conn.close()

    def _tx(self):
        """One unit: its own transaction, or part of the one the owner of a
        shared connection has open."""
        return transaction(self._conn, self._lock)

    def set_keys(self, keys: OutboundKeys) -> None:
        """Seal and open with ``keys`` from now on (the operator rotated the secret)."""
        self._keys = keys

    def _sealer(self) -> OutboundKeys:
        if self._keys is None:
            raise OutboundKeyError("this outbound store was opened without the outbound queue keys")
        return self._keys

    def append(self, destination: str, message_id: bytes, payload: bytes, now_ms: int) -> int:
        key_id, sealed = self._sealer().seal(destination, message_id, payload)
        with self._tx() as db:
            cur = db.execute("INSERT INTO outbound_queue (destination, message_id, payload, enqueued_ms, key_id) "
                             "VALUES (?, ?, ?, ?, ?)", (destination, message_id, sealed, now_ms, key_id))
            return int(cur.lastrowid)

    def head(self, destination: str) -> OutboundItem | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT seq, message_id, payload, enqueued_ms, key_id FROM outbound_queue "
                "WHERE destination = ? ORDER BY seq LIMIT 1", (destination,)).fetchone()
        if row is None:
            return None
        seq, message_id, sealed, enqueued_ms, key_id = row
        payload = self._sealer().open(key_id or b"", destination, bytes(message_id), bytes(sealed))
        return OutboundItem(destination, seq, bytes(message_id), payload, enqueued_ms)

    def remove(self, destination: str, seq: int) -> OutboundItem | None:
        with self._tx() as db:
            db.execute("DELETE FROM outbound_queue WHERE destination = ? AND seq = ?", (destination, seq))
        return self.head(destination)

    def dead_letter(self, destination: str, seq: int, rejected: "Rejected", now_ms: int) -> OutboundItem | None:
        with self._tx() as db:
            db.execute("INSERT INTO outbound_dead_letters (destination, message_id, key_id, payload, enqueued_ms, "
                       "rejected_ms, status, code, message) SELECT destination, message_id, key_id, payload, "
                       "enqueued_ms, ?, ?, ?, ? FROM outbound_queue WHERE destination = ? AND seq = ?",
                       (now_ms, rejected.status, rejected.code, rejected.reason, destination, seq))
            db.execute("DELETE FROM outbound_queue WHERE destination = ? AND seq = ?", (destination, seq))
        return self.head(destination)

    def batch(self, destination: str, max_items: int, max_bytes: int) -> list[OutboundItem]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, message_id, payload, enqueued_ms, key_id FROM outbound_queue "
                "WHERE destination = ? ORDER BY seq LIMIT ?", (destination, max_items)).fetchall()
        rows = _within(rows, max_bytes, lambda row: len(row[2]) - SEAL_OVERHEAD)
        sealer = self._sealer() if rows else None
        return [OutboundItem(destination, seq, bytes(mid), sealer.open(key_id or b"", destination, bytes(mid),
                                                                        bytes(sealed)), enqueued_ms)
                for seq, mid, sealed, enqueued_ms, key_id in rows]

    def settle(self, destination: str, delivered: list[int], rejected: list[tuple[int, "Rejected"]], now_ms: int,
               max_items: int, max_bytes: int) -> list[OutboundItem]:
        with self._tx() as db:
            if rejected:
                db.executemany(
                    "INSERT INTO outbound_dead_letters (destination, message_id, key_id, payload, enqueued_ms, "
                    "rejected_ms, status, code, message) SELECT destination, message_id, key_id, payload, "
                    "enqueued_ms, ?, ?, ?, ? FROM outbound_queue WHERE destination = ? AND seq = ?",
                    [(now_ms, r.status, r.code, r.reason, destination, seq) for seq, r in rejected])
            db.executemany("DELETE FROM outbound_queue WHERE destination = ? AND seq = ?",
                           [(destination, seq) for seq in [*delivered, *(seq for seq, _ in rejected)]])
        return self.batch(destination, max_items, max_bytes)

    def expire(self, before_ms: int, rejected: "Rejected", now_ms: int, keep: dict[str, Collection[int]]) -> int:
        with self._tx() as db:
            old = [(d, seq) for d, seq in db.execute(
                       "SELECT destination, seq FROM outbound_queue WHERE enqueued_ms < ?", (before_ms,)).fetchall()
                   if seq not in keep.get(d, ())]
            db.executemany("INSERT INTO outbound_dead_letters (destination, message_id, key_id, payload, enqueued_ms, "
                           "rejected_ms, status, code, message) SELECT destination, message_id, key_id, payload, "
                           "enqueued_ms, ?, ?, ?, ? FROM outbound_queue WHERE destination = ? AND seq = ?",
                           [(now_ms, rejected.status, rejected.code, rejected.reason, d, seq) for d, seq in old])
            db.executemany("DELETE FROM outbound_queue WHERE destination = ? AND seq = ?", old)
        return len(old)

    def destinations(self) -> list[str]:
        with self._lock:
            rows = self._conn.execute("SELECT DISTINCT destination FROM outbound_queue ORDER BY destination").fetchall()
        return [r[0] for r in rows]

    def park(self, destination: str, reason: str, now_ms: int) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO outbound_parked VALUES (?, ?, ?)", (destination, reason, now_ms))

    def unpark(self, destination: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM outbound_parked WHERE destination = ?", (destination,)).rowcount > 0

    def parked(self) -> dict[str, Parked]:
        with self._lock:
            rows = self._conn.execute("SELECT destination, reason, parked_ms FROM outbound_parked").fetchall()
        return {d: Parked(reason, ms) for d, reason, ms in rows}

    # --- the operator's view -------------------------------------------------------------

    def pending_counts(self) -> dict[str, int]:
        """Pending items per destination."""
        with self._lock:
            return dict(self._conn.execute(
                "SELECT destination, COUNT(*) FROM outbound_queue GROUP BY destination").fetchall())

    def queue_summary(self) -> dict[str, tuple[int, int]]:
        """Per destination with pending items: (how many, oldest ``enqueued_ms``)
        — one query, for the metrics a scrape computes."""
        with self._lock:
            rows = self._conn.execute("SELECT destination, COUNT(*), MIN(enqueued_ms) FROM outbound_queue "
                                      "GROUP BY destination").fetchall()
        return {d: (n, oldest) for d, n, oldest in rows}

    def dead_letter_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._conn.execute(
                "SELECT destination, COUNT(*) FROM outbound_dead_letters GROUP BY destination").fetchall())

    def recent_dead_letters(self, destination: str, limit: int) -> list[DeadLetter]:
        """The last ``limit`` dead letters of ``destination``, newest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT message_id, enqueued_ms, rejected_ms, status, code, message FROM outbound_dead_letters "
                "WHERE destination = ? ORDER BY id DESC LIMIT ?", (destination, limit)).fetchall()
        return [DeadLetter(destination, bytes(mid), enq, rej, status, code, msg)
                for mid, enq, rej, status, code, msg in rows]

    def drop_dead_letters(self, destination: str) -> int:
        """Delete the dead letters of ``destination`` (the operator has read
        them) and wipe them from the files; returns how many there were."""
        with self._tx() as db:
            n = db.execute("DELETE FROM outbound_dead_letters WHERE destination = ?", (destination,)).rowcount
        purge_deleted(self._conn, self._lock)
        return n


# --- outcomes of one delivery attempt ----------------------------------------------------

@dataclass(frozen=True)
class Delivered:
    """The receiver accepted the message; ``response`` is its answer body."""
    response: bytes = b""


@dataclass(frozen=True)
class RetryLater:
    """Transient failure: connection error, timeout, 5xx or 429.

    ``retry_after`` (seconds) is the receiver's ``Retry-After`` if it sent one.
    """
    reason: str
    retry_after: float | None = None


@dataclass(frozen=True)
class Rejected:
    """Permanent refusal (a 4xx other than 429): retrying cannot help, so the
    message goes to the dead letters to unblock the queue behind it.
    ``code`` is the error code of the receiver's answer, if it gave one."""
    status: int
    reason: str
    code: str | None = None


def expired_rejection(max_age_ms: int) -> Rejected:
    """What a dead letter records for a message that grew too old: no
    answer (status 0), code :data:`EXPIRED`, and the limit it passed."""
    return Rejected(0, f"not delivered within {max_age_ms // 1000} s of being queued "
                       "(limits.federation_outbound_max_age_s)", EXPIRED)


Outcome = Delivered | RetryLater | Rejected
SendFn = Callable[[OutboundItem], Awaitable[Outcome]]
#: One attempt for several items of one destination: one outcome for all
#: (an answer to the request as a whole, a network failure) or one per item.
SendBatchFn = Callable[[list[OutboundItem]], Awaitable["Outcome | list[Outcome]"]]


@dataclass(frozen=True)
class BatchLimits:
    """How much one attempt may carry: at most ``max_messages`` items and,
    beyond the first, no more than ``max_bytes`` of payload.

    ``linger_s`` and ``gather``: after an attempt that carried more than
    one item — proof of a backlog — while items still wait, the sender
    lets the next batch gather before it reads it: until ``gather`` items
    wait (counted from the wake-ups, :meth:`OutboundSender.wake`) or for
    ``linger_s`` at most, and not at all when a full batch already waits.
    So a heavy backlog pays a short wait and a light one at most
    ``linger_s``; a lone message after a quiet spell never waits (module
    docstring)."""
    max_messages: int = 1
    max_bytes: int = 1 << 20
    linger_s: float = 0.0
    gather: int = 16

    def full(self, items: Sequence["OutboundItem"]) -> bool:
        """Whether ``items`` is as large a batch as an attempt may carry."""
        return len(items) >= self.max_messages or sum(len(i.payload) for i in items) >= self.max_bytes


def outcome_of_failure(error: Exception) -> Outcome | None:
    """What an exception raised by a delivery attempt means for the message.

    The receiver's answer (:class:`~.client.RemoteRefused`): 409
    ``duplicate_message`` is :class:`Delivered` with an empty answer (an
    earlier attempt got through; phoenix_ref itself answers a replay with
    200 and the first answer, other implementations may refuse it); 429 and 5xx are :class:`RetryLater` (with the ``Retry-After``
    it gave); any other status is :class:`Rejected`. A destination the
    operator does not federate with is Rejected (403). A network or TLS
    failure, a timeout or an answer that does not decode, and any
    ``OSError``, is RetryLater. Anything else is a programming error: None.
    """
    if isinstance(error, RemoteRefused):
        if error.status == 409 and error.code == "duplicate_message":
            return Delivered(b"")
        if error.status == 429 or error.status >= 500:
            return RetryLater(f"{error.status} {error.code}", error.retry_after)
        return Rejected(error.status, str(error), error.code)
    if isinstance(error, NotFederated):
        return Rejected(403, str(error), "domain_not_allowed")
    if isinstance(error, (FederationError, OSError)):
        return RetryLater(f"{type(error).__name__}: {error}")
    return None


@dataclass(frozen=True)
class BackoffPolicy:
    """Exponential backoff with jitter.

    The n-th consecutive failure (n ≥ 1) waits
    ``min(max_delay, base_delay * factor**(n-1))`` scaled by a random factor
    in ``[1 - jitter, 1]`` ("equal jitter": never more than the cap, never
    synchronised across senders). A ``Retry-After`` replaces the computed
    delay (bounded by ``max_retry_after``).
    """
    base_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.5
    max_retry_after: float = 3600.0
    attempt_timeout: float = 30.0
    #: How often a parked destination looks whether an operator unparked it.
    park_check_interval: float = 30.0

    def delay(self, failures: int, rng: _random.Random, retry_after: float | None = None) -> float:
        if retry_after is not None and retry_after >= 0 and math.isfinite(retry_after):
            return min(retry_after, self.max_retry_after)
        try:
            exp = min(self.max_delay, self.base_delay * self.factor ** max(0, failures - 1))
        except OverflowError:   # a long outage: factor**n no longer fits a float
            exp = self.max_delay
        return exp * (1.0 - self.jitter * rng.random())


@dataclass
class _Destination:
    wakeup: trio.Event = field(default_factory=trio.Event)
    arrived: int = 0        # messages announced by wake() since the sender last read the queue
    failures: int = 0
    unparked: trio.Event | None = None   # set while parked


class OutboundSender:
    """Runs one sender task per destination (see the module docstring).

    ``store``: where queues live. ``send``: one delivery attempt; it returns
    an :class:`Outcome` or raises, and :func:`outcome_of_failure` says what
    the exception means. ``send_batch``: one attempt for several items of a
    destination (a backlog), bounded by ``batch_limits``; it returns one
    :class:`Outcome` for all of them or a list with one per item (a lone
    item always goes through ``send``). Delivered and refused items of an
    attempt leave the queue in one store call (:meth:`OutboundStore.settle`);
    the first item told to retry and every item behind it stay at the head
    (order holds: what the receiver took behind it is a replay next time),
    and the destination backs off (the longest ``Retry-After`` among them)
    before its next attempt. ``on_delivered(item, response)`` /
    ``on_rejected(item, outcome)``: called (synchronously, in the Trio
    thread) after a definite answer and before the item leaves the queue —
    the QS uses the first to hand ``QueueDeleted`` answers back to its DS.
    ``now_ms``: the wall clock for the times stored with dead letters and
    parkings, and for the age of messages. ``rng``: source of jitter (tests
    pass a seeded one).

    **Messages too old** — queued more than ``max_age_ms`` ago (None: no
    limit) — are not sent: right before every attempt the sender looks at
    its head's age and moves an old head to the dead letters
    (:func:`expired_rejection`). The homeserver's sweeper moves the old
    items behind the heads (:meth:`OutboundStore.expire`), sparing each
    destination's :meth:`held` items (the batch under way). The sender
    records its batch as held *before* it checks the ages, and the sweeper reads the clock *before* it
    looks at the held heads, so a message the sweeper moves is either one
    no attempt has begun on or one the sender finds expired itself; an
    expired message is never sent.

    ``on_attempt(items, outcomes, attempt=, seconds=, retry_in=)``: told
    about every attempt once its outcomes are known, once per attempt with
    its items and their outcomes in order (``attempt`` counts the tries of
    the head, from 1; ``retry_in`` is the delay before the next one when
    an outcome is a :class:`RetryLater`) — the homeserver's request log and
    metrics; an exception it raises is logged and changes nothing.

    **Refused messages** (:class:`Rejected`) move to the store's dead
    letters with the answer, and a WARNING names them.

    **Programming errors** — an exception that is no answer, network or TLS
    failure (a bug in ``send``, in a callback, in the store, a payload that
    no longer opens) — are logged with their traceback and counted in
    :attr:`stats`; the destination is *parked*: recorded in the store with
    the reason (the operator's ``phoenix-ref admin … outbound`` lists it) and sent
    nothing more until :meth:`unpark` or an operator's unpark in the store
    (looked for every ``policy.park_check_interval`` seconds), or a restart
    (:meth:`run` retries parked destinations once). Other destinations go on.

    Start it with ``await nursery.start(sender.run)``; it owns its tasks and
    stops with the nursery's cancel scope.
    """

    def __init__(self, store: OutboundStore, send: SendFn, *,
                 policy: BackoffPolicy = BackoffPolicy(),
                 on_delivered: Callable[[OutboundItem, bytes], None] | None = None,
                 on_rejected: Callable[[OutboundItem, Rejected], None] | None = None,
                 now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
                 rng: _random.Random | None = None, max_age_ms: int | None = None,
                 on_attempt: Callable[..., None] | None = None,
                 send_batch: SendBatchFn | None = None, batch_limits: BatchLimits | None = None):
        self.store = store
        self.on_attempt = on_attempt
        self.send = send
        self.send_batch = send_batch
        #: Without ``send_batch`` every attempt carries one item.
        self.batch_limits = (batch_limits or BatchLimits(max_messages=100)) if send_batch else BatchLimits(1)
        self.policy = policy
        self.on_delivered = on_delivered
        self.on_rejected = on_rejected
        self.now_ms = now_ms
        self.rng = rng or _random.Random()
        self.max_age_ms = max_age_ms
        self._held: dict[str, tuple[int, ...]] = {}   # destination → seqs of the items its task works on
        self._held_lock = threading.Lock()   # held() is read from the sweeper's worker thread
        #: ``delivered``, ``retried``, ``dead_lettered``, ``expired``, ``programming_errors``
        #: (items), ``attempts`` (requests).
        self.stats: Counter[str] = Counter()
        self._dests: dict[str, _Destination] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Resume every pending queue (parked ones too: a restart is how a
        fix is deployed), then serve wake-ups until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                for destination, parked in (await self._store(self.store.parked)).items():
                    log.warning("outbound to %s: parked since %d (%s); trying again after the restart",
                                destination, parked.parked_ms, parked.reason)
                    await self._store(self.store.unpark, destination)
                for destination in await self._store(self.store.destinations):
                    self.wake(destination)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def submit(self, destination: str, message_id: bytes, payload: bytes, now_ms: int) -> int:
        """Persist one message for ``destination`` and wake its sender."""
        seq = await self._store(self.store.append, destination, message_id, payload, now_ms)
        self.wake(destination)
        return seq

    async def _store(self, fn, *args):
        """Blocking stores run in a worker thread (GUIDE §4); others inline."""
        if getattr(self.store, "needs_thread", True):
            return await trio.to_thread.run_sync(fn, *args)
        return fn(*args)

    def wake(self, destination: str, messages: int = 1) -> None:
        """Tell ``destination``'s sender that its queue has ``messages`` new
        messages (call after a store transaction that appended them
        committed; the count only shortens a linger, :class:`BatchLimits`).
        Starts the sender task if it does not exist yet."""
        state = self._dests.get(destination)
        if state is None:
            if self._nursery is None:
                raise RuntimeError("OutboundSender.run is not running")
            state = self._dests[destination] = _Destination()
            self._nursery.start_soon(self._serve, destination, state, name=f"outbound:{destination}")
        state.arrived += messages
        state.wakeup.set()

    def held(self) -> dict[str, tuple[int, ...]]:
        """Destination → sequence numbers of the items its sender is working
        on (checking, sending, waiting to retry). Thread-safe."""
        with self._held_lock:
            return dict(self._held)

    def _hold(self, destination: str, items: Sequence[OutboundItem]) -> None:
        with self._held_lock:
            if not items:
                self._held.pop(destination, None)
            else:
                self._held[destination] = tuple(i.seq for i in items)

    def _too_old(self, item: OutboundItem) -> bool:
        return self.max_age_ms is not None and self.now_ms() - item.enqueued_ms > self.max_age_ms

    def pending_failures(self, destination: str) -> int:
        """Consecutive failed attempts of ``destination``'s head (for tests, metrics)."""
        state = self._dests.get(destination)
        return state.failures if state else 0

    def is_parked(self, destination: str) -> bool:
        state = self._dests.get(destination)
        return state is not None and state.unparked is not None

    async def unpark(self, destination: str) -> bool:
        """Let a parked destination's sender go on; whether it was parked."""
        was = await self._store(self.store.unpark, destination)
        state = self._dests.get(destination)
        if state is not None and state.unparked is not None:
            state.unparked.set()
            return True
        return was

    async def _serve(self, destination: str, state: _Destination) -> None:
        while True:
            try:
                await self._drain(destination, state)
            except Exception as e:  # noqa: BLE001 - a programming error: park, never crash the homeserver
                self._hold(destination, ())   # a parked queue is the sweeper's to expire
                await self._park(destination, state, e)

    def _bounds(self) -> tuple[int, int]:
        return self.batch_limits.max_messages, self.batch_limits.max_bytes

    async def _drain(self, destination: str, state: _Destination) -> None:
        # A fresh event before every read of the queue: a wake() after the
        # read sets it, so no wake-up is lost. Only this task removes items
        # of ``destination``, so the items it has read stay at the head.
        # A batch is what is waiting when the previous attempt ended (after
        # the linger of BatchLimits when that attempt showed a backlog); a
        # lone message after a quiet spell goes at once.
        state.wakeup = trio.Event()
        items = await self._store(self.store.batch, destination, *self._bounds())
        while True:
            if not items:
                self._hold(destination, ())
                await state.wakeup.wait()
                state.wakeup = trio.Event()
                items = await self._store(self.store.batch, destination, *self._bounds())
                continue
            self._hold(destination, items)   # first hold, then look at the age (class docstring)
            old = [i for i in items if self._too_old(i)]
            if old:
                state.failures = 0
                state.wakeup = trio.Event()
                items = await self._expire(destination, old)
                continue
            started = time.monotonic()
            outcomes = _in_order(await self._attempt(items))
            seconds = time.monotonic() - started
            self.stats["attempts"] += 1
            retry = [o for o in outcomes if isinstance(o, RetryLater)]
            delay = None
            if retry:
                state.failures += 1
                self.stats["retried"] += len(retry)
                after = [o.retry_after for o in retry if o.retry_after is not None]
                delay = self.policy.delay(state.failures, self.rng, max(after) if after else None)
            self._tell(items, outcomes, state.failures if retry else state.failures + 1, seconds, delay)
            settled = [(i, o) for i, o in zip(items, outcomes) if not isinstance(o, RetryLater)]
            if not retry:
                state.failures = 0
                state.wakeup = trio.Event()
                state.arrived = 0
                items = await self._settle(destination, settled)
                if len(settled) > 1 and items and self.batch_limits.linger_s \
                        and not self.batch_limits.full(items):
                    await self._linger(state, len(items))   # a backlog: let the next batch fill
                    items = await self._store(self.store.batch, destination, *self._bounds())
                continue
            if settled:
                await self._settle(destination, settled)
            log.info("outbound to %s: %s; retry %d in %.1fs",
                     destination, retry[0].reason, state.failures, delay)
            await trio.sleep(delay)
            state.wakeup = trio.Event()
            items = await self._store(self.store.batch, destination, *self._bounds())

    async def _linger(self, state: _Destination, waiting: int) -> None:
        """Wait until ``waiting`` plus the messages announced since the last
        read reach ``BatchLimits.gather`` (or the count bound), or for
        ``linger_s`` at most. Messages announced while the last read ran
        may be counted twice: that only ends the wait a little early."""
        goal = min(self.batch_limits.gather, self.batch_limits.max_messages)
        with trio.move_on_after(self.batch_limits.linger_s):
            while waiting + state.arrived < goal:
                await state.wakeup.wait()
                state.wakeup = trio.Event()

    def _tell(self, items: list[OutboundItem], outcomes: list[Outcome], attempt: int, seconds: float,
              retry_in: float | None) -> None:
        if self.on_attempt is None:
            return
        try:
            self.on_attempt(items, outcomes, attempt=attempt, seconds=seconds, retry_in=retry_in)
        except Exception:   # noqa: BLE001 - observing must not stop (or park) delivery
            log.exception("outbound to %s: the attempt observer failed", items[0].destination)

    async def _settle(self, destination: str, settled: list[tuple[OutboundItem, Delivered | Rejected]]
                      ) -> list[OutboundItem]:
        """Tell the callbacks, then take the delivered items out of the
        queue and the rejected ones into the dead letters, in one store
        call; return the next batch."""
        delivered, rejected = [], []
        for item, outcome in settled:
            if isinstance(outcome, Delivered):
                if self.on_delivered is not None:
                    self.on_delivered(item, outcome.response)
                self.stats["delivered"] += 1
                delivered.append(item.seq)
                continue
            if self.on_rejected is not None:
                self.on_rejected(item, outcome)
            log.warning("outbound to %s refused for good (%d %s: %s); message %s moved to the dead letters",
                        item.destination, outcome.status, outcome.code, outcome.reason, item.message_id.hex())
            self.stats["dead_lettered"] += 1
            rejected.append((item.seq, outcome))
        return await self._store(self.store.settle, destination, delivered, rejected, self.now_ms(),
                                 *self._bounds())

    async def _expire(self, destination: str, old: list[OutboundItem]) -> list[OutboundItem]:
        """Move items that grew too old to the dead letters; return the next batch."""
        for item in old:
            log.warning("outbound to %s: message %s not delivered within %d s; moved to the dead letters",
                        item.destination, item.message_id.hex(), self.max_age_ms // 1000)
        self.stats["expired"] += len(old)
        rejection = expired_rejection(self.max_age_ms)
        return await self._store(self.store.settle, destination, [], [(i.seq, rejection) for i in old],
                                 self.now_ms(), *self._bounds())

    async def _attempt(self, items: list[OutboundItem]) -> list[Outcome]:
        """One try for ``items`` (one request), bounded in time: one outcome
        per item. An exception :func:`outcome_of_failure` cannot place, or
        an answer that is no outcome (or not one per item), propagates (a
        programming error)."""
        with trio.move_on_after(self.policy.attempt_timeout):
            try:
                if len(items) == 1 or self.send_batch is None:
                    outcome = await self.send(items[0])
                else:
                    outcome = await self.send_batch(items)
            except Exception as e:
                known = outcome_of_failure(e)
                if known is None:
                    raise
                return [known] * len(items)
            outcomes = outcome if isinstance(outcome, list) else [outcome] * len(items)
            if len(outcomes) != len(items) or not all(
                    isinstance(o, (Delivered, RetryLater, Rejected)) for o in outcomes):
                raise TypeError(f"send returned {outcome!r}, not an Outcome (or one per item)")
            return outcomes
        return [RetryLater("attempt timed out")] * len(items)

    async def _park(self, destination: str, state: _Destination, error: Exception) -> None:
        """Stop ``destination`` after a programming error until it is unparked."""
        self.stats["programming_errors"] += 1
        reason = f"{type(error).__name__}: {error}"
        log.exception("outbound to %s: programming error; destination parked until an operator unparks it "
                      "(phoenix-ref admin --config FILE outbound --unpark %s) or a restart", destination, destination, exc_info=error)
        unparked = trio.Event()
        try:
            await self._store(self.store.park, destination, reason, self.now_ms())
        except Exception:  # noqa: BLE001 - the store fails too: parked in memory only
            log.exception("outbound to %s: cannot record the parking; parked until unpark() or a restart",
                          destination)
            state.unparked = unparked
            await unparked.wait()
        else:
            state.unparked = unparked
            await self._until_unparked(destination, unparked)
        state.unparked = None
        state.failures = 0
        log.warning("outbound to %s unparked; sending again", destination)

    async def _until_unparked(self, destination: str, unparked: trio.Event) -> None:
        """Wait for :meth:`unpark`, looking at the store now and then for an
        operator's unpark (another process)."""
        while not unparked.is_set():
            with trio.move_on_after(self.policy.park_check_interval):
                await unparked.wait()
            if destination not in await self._store(self.store.parked):
                return
