"""Durable per-destination outbound federation queues (GUIDE §3).

A homeserver that must deliver something to another homeserver — for the
QS, the one signed ``QsToQsMessage`` per remote domain of a fan-out
(``spec/queuing_service.md#federated-qs-to-qs-communication``) — does not
send it inline. It appends the message to the destination's queue in its
own store, in the same transaction as the rest of the request when the
store allows, and returns. One sender task per destination, all inside the
homeserver's Trio nursery, then delivers that queue:

* **in order**: a destination's queue is sent head first, one message at a
  time; the next message leaves only once the head is delivered or refused
  for good;
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
  deduplicate by message id.

The module knows nothing about what it carries: the caller provides a
``send`` coroutine that performs one attempt and says how it went
(:class:`Delivered`, :class:`RetryLater` or :class:`Rejected`). The QS's
``send`` frames and signs the stored payload at every attempt, so the
timestamp a receiver checks is that of the attempt, not of the enqueue.

Storage: :class:`MemoryOutboundStore` for tests and :class:`SqliteOutboundStore`
(stdlib ``sqlite3``, table ``outbound_queue``), which can share the
connection of a service store so that queueing happens in that store's
transaction.
"""

from __future__ import annotations

import logging
import math
import random as _random
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

import trio

from ..storage import open_connection, transaction

__all__ = [
    "OutboundItem", "OutboundStore", "MemoryOutboundStore", "SqliteOutboundStore",
    "Delivered", "RetryLater", "Rejected", "Outcome", "BackoffPolicy", "OutboundSender",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutboundItem:
    """One queued message: ``seq`` orders a destination's queue."""
    destination: str
    seq: int
    message_id: bytes
    payload: bytes
    enqueued_ms: int


class OutboundStore(Protocol):
    """The storage interface of outbound queues. Methods are synchronous
    (they run in a worker thread, GUIDE §4)."""

    def append(self, destination: str, message_id: bytes, payload: bytes, now_ms: int) -> int:
        """Append to ``destination``'s queue; return the item's sequence number."""

    def head(self, destination: str) -> OutboundItem | None:
        """The oldest pending item for ``destination``, or None."""

    def remove(self, destination: str, seq: int) -> OutboundItem | None:
        """Drop a delivered (or definitively refused) item; return the new
        head of ``destination``'s queue (one call where a sender would
        otherwise make two)."""

    def destinations(self) -> list[str]:
        """Every destination that has at least one pending item."""


class MemoryOutboundStore:
    """In-memory :class:`OutboundStore` (tests)."""

    #: Calls are cheap and never block: no worker thread needed.
    needs_thread = False

    def __init__(self) -> None:
        self._queues: dict[str, list[OutboundItem]] = {}
        self._next = 1
        self._lock = threading.Lock()

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

    def destinations(self) -> list[str]:
        with self._lock:
            return sorted(d for d, q in self._queues.items() if q)


class SqliteOutboundStore:
    """:class:`OutboundStore` in an SQLite table.

    ``conn`` is either a path (the store opens its own connection, WAL mode)
    or an open ``sqlite3.Connection`` owned by a service store; in the latter
    case ``lock`` must be that store's re-entrant lock, and an append made
    while the owner has a transaction open (:func:`phoenix_ref.storage.transaction`)
    commits or rolls back with it.
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS outbound_queue (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,
        message_id BLOB NOT NULL,
        payload BLOB NOT NULL,
        enqueued_ms INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS outbound_queue_dest ON outbound_queue (destination, seq);
    """

    needs_thread = True

    def __init__(self, conn: str | sqlite3.Connection, lock: threading.RLock | None = None):
        self._own = not isinstance(conn, sqlite3.Connection)
        self._conn = open_connection(conn) if self._own else conn
        self._lock = lock or threading.RLock()
        with self._lock:
            self._conn.executescript(self.SCHEMA)

    def close(self) -> None:
        if self._own:
            self._conn.close()

    def _write(self, sql: str, args: tuple) -> sqlite3.Cursor:
        """One statement as one unit: its own transaction, or part of the
        transaction the owner of a shared connection has open."""
        with transaction(self._conn, self._lock) as db:
            return db.execute(sql, args)

    def append(self, destination: str, message_id: bytes, payload: bytes, now_ms: int) -> int:
        cur = self._write(
            "INSERT INTO outbound_queue (destination, message_id, payload, enqueued_ms) VALUES (?, ?, ?, ?)",
            (destination, message_id, payload, now_ms))
        return int(cur.lastrowid)

    def head(self, destination: str) -> OutboundItem | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT seq, message_id, payload, enqueued_ms FROM outbound_queue "
                "WHERE destination = ? ORDER BY seq LIMIT 1", (destination,)).fetchone()
        if row is None:
            return None
        return OutboundItem(destination, row[0], bytes(row[1]), bytes(row[2]), row[3])

    def remove(self, destination: str, seq: int) -> OutboundItem | None:
        with self._lock:
            self._write("DELETE FROM outbound_queue WHERE destination = ? AND seq = ?", (destination, seq))
            return self.head(destination)

    def destinations(self) -> list[str]:
        with self._lock:
            rows = self._conn.execute("SELECT DISTINCT destination FROM outbound_queue ORDER BY destination").fetchall()
        return [r[0] for r in rows]


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
    message is dropped to unblock the queue behind it."""
    status: int
    reason: str


Outcome = Delivered | RetryLater | Rejected
SendFn = Callable[[OutboundItem], Awaitable[Outcome]]


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
    failures: int = 0


class OutboundSender:
    """Runs one sender task per destination (see the module docstring).

    ``store``: where queues live. ``send``: one delivery attempt.
    ``on_delivered(item, response)`` / ``on_rejected(item, outcome)``: called
    (synchronously, in the Trio thread) after a definite answer and before
    the item is removed — the QS uses the first to hand ``QueueDeleted``
    answers back to its DS. ``rng``: source of jitter (tests pass a seeded one).

    Start it with ``await nursery.start(sender.run)``; it owns its tasks and
    stops with the nursery's cancel scope.
    """

    def __init__(self, store: OutboundStore, send: SendFn, *,
                 policy: BackoffPolicy = BackoffPolicy(),
                 on_delivered: Callable[[OutboundItem, bytes], None] | None = None,
                 on_rejected: Callable[[OutboundItem, Rejected], None] | None = None,
                 rng: _random.Random | None = None):
        self.store = store
        self.send = send
        self.policy = policy
        self.on_delivered = on_delivered
        self.on_rejected = on_rejected
        self.rng = rng or _random.Random()
        self._dests: dict[str, _Destination] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Resume every pending queue, then serve wake-ups until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
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

    def wake(self, destination: str) -> None:
        """Tell ``destination``'s sender that its queue has new messages
        (call after a store transaction that appended to it committed).
        Starts the sender task if it does not exist yet."""
        state = self._dests.get(destination)
        if state is None:
            if self._nursery is None:
                raise RuntimeError("OutboundSender.run is not running")
            state = self._dests[destination] = _Destination()
            self._nursery.start_soon(self._serve, destination, state, name=f"outbound:{destination}")
        state.wakeup.set()

    def pending_failures(self, destination: str) -> int:
        """Consecutive failed attempts of ``destination``'s head (for tests, metrics)."""
        state = self._dests.get(destination)
        return state.failures if state else 0

    async def _serve(self, destination: str, state: _Destination) -> None:
        # A fresh event before every read of the head: a wake() after the
        # read sets it, so no wake-up is lost. Only this task removes items
        # of ``destination``, so a head it has read stays the head.
        state.wakeup = trio.Event()
        item = await self._store(self.store.head, destination)
        while True:
            if item is None:
                await state.wakeup.wait()
                state.wakeup = trio.Event()
                item = await self._store(self.store.head, destination)
                continue
            outcome = await self._attempt(item)
            if isinstance(outcome, RetryLater):
                state.failures += 1
                delay = self.policy.delay(state.failures, self.rng, outcome.retry_after)
                log.info("outbound to %s: %s; retry %d in %.1fs",
                         destination, outcome.reason, state.failures, delay)
                await trio.sleep(delay)
                continue
            state.failures = 0
            try:
                if isinstance(outcome, Delivered):
                    if self.on_delivered is not None:
                        self.on_delivered(item, outcome.response)
                else:
                    log.warning("outbound to %s refused for good (%d %s); dropped message %s",
                                destination, outcome.status, outcome.reason, item.message_id.hex())
                    if self.on_rejected is not None:
                        self.on_rejected(item, outcome)
            except Exception:  # a callback bug must not stall the queue
                log.exception("outbound callback failed for %s", destination)
            state.wakeup = trio.Event()
            item = await self._store(self.store.remove, destination, item.seq)

    async def _attempt(self, item: OutboundItem) -> Outcome:
        """One try, bounded in time; any exception counts as transient."""
        with trio.move_on_after(self.policy.attempt_timeout):
            try:
                outcome = await self.send(item)
            except Exception as e:  # noqa: BLE001 - connection errors of any client library
                return RetryLater(f"{type(e).__name__}: {e}")
            if not isinstance(outcome, (Delivered, RetryLater, Rejected)):
                return RetryLater(f"send returned {outcome!r}")
            return outcome
        return RetryLater("attempt timed out")
