"""The DS's async shell: locking, storage and hand-over to the local QS.

One request on a group (``spec/delivery_service.md#validation``):

1. take the group's lock (one Trio lock per group id, so two commits for
   the same epoch are decided one after the other: the second meets the new
   epoch and gets ``409 wrong_epoch``) and the hand-over lock (one
   hand-over at a time keeps the outbox order);
2. in one worker-thread call: read the row, run the core, write the
   outcome — the new state and its fan-outs as outbox entries in one
   transaction (decision A40) — and then hand the fan-outs to the QS with
   their message ids (the QS enqueues once per id, all of them in one
   transaction of its own: :meth:`QsHandover.take_handovers`). One thread
   hand-off per request, not one per store (issue 17);
3. back on the Trio thread: the QS's wake-ups (websockets, outbound
   senders), the QueueDeleted answers stored sealed to the group's Queue
   ID key, the handed-over entries dropped;
4. release the locks, answer.

Dropping the handed-over entries is not a transaction of its own on the
send path: their sequence numbers wait in memory and are deleted in the
next request's write (step 2 of the next request, of any group), or by
the background task after at most ``DONE_FLUSH_DELAY_S`` when no request
comes. What that saves per message: one worker-thread hand-off, one
SQLite transaction and its fsync. It is safe because the hand-over is
idempotent: an entry whose deletion was lost (a crash or power cut within
that delay) is handed over once more at the next start, and the QS,
which remembers the message id for days (``QsConfig.local_message_id_keep_ms``),
answers "duplicate" and enqueues nothing (docs/decisions.md, "DS outbox
entries dropped with the next write"). QueueDeleted answers are never
deferred: a hand-over that brings some writes them, and the waiting
deletions with them, at once.

A crash after step 2 leaves the entries in the outbox; :meth:`DsService.run`
hands them over at start (in order) and retries any that failed.

**Crash point for tests.** The environment variable ``PHOENIX_CRASH_AT``,
read once when a :class:`DsService` is built, can name the moment in step 2
between the DS's write and the hand-over: ``ds-after-state-write`` (or ``ds-after-state-write:<n>``
for the n-th time, counting only writes that left fan-outs to hand over).
There the process sends itself SIGKILL, as a power cut would stop it: the
new state and its outbox entries are on disk, nothing reached the QS, no
answer left. Unset (the normal case), nothing happens. Other values are for
other components and are ignored here (docs/decisions.md, "Crash points
for tests").
"""

from __future__ import annotations

import logging
import os
import signal
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Protocol

import trio

from ..crypto import random_bytes
from ..errors import ProtocolError
from ..ids import GroupId
from ..queuing.core import LocalEnqueueResult
from ..queuing.messages import QueueDeleted
from . import messages as m
from .core import DsCore, group_id_of_request
from .store import DsStore, OutboxEntry

__all__ = ["DsService", "QsHandover", "MESSAGE_ID_LEN", "CRASH_ENV", "CRASH_AFTER_STATE_WRITE", "crash_countdown"]

log = logging.getLogger(__name__)
MESSAGE_ID_LEN = 16
#: How often the DS retries outbox entries the QS did not take.
RETRY_INTERVAL_S = 5.0
#: The longest a handed-over outbox entry waits for a request's write to
#: delete it before the background task deletes it on its own (module docstring).
DONE_FLUSH_DELAY_S = 1.0
#: The test crash point (module docstring).
CRASH_ENV = "PHOENIX_CRASH_AT"
CRASH_AFTER_STATE_WRITE = "ds-after-state-write"


def crash_countdown(value: str | None) -> int | None:
    """How many state writes with fan-outs the DS makes before it kills
    itself, from a ``PHOENIX_CRASH_AT`` value; None for no crash."""
    if not value:
        return None
    point, _, count = value.partition(":")
    if point != CRASH_AFTER_STATE_WRITE:
        return None
    if not count:
        return 1
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"{CRASH_ENV}={value!r}: the count after ':' is a positive integer")
    return int(count)


class QsHandover(Protocol):
    """What the DS needs of the local QS (:class:`~phoenix_ref.queuing.service.QsService`)."""

    def take_handovers(self, handovers: list[tuple[Any, bytes]]
                       ) -> tuple[list[LocalEnqueueResult], ProtocolError | None]:
        """Enqueue ``(FanOutMessage, message_id)`` pairs in order, in one
        transaction; blocking (a worker thread calls it). Returns the
        results of those taken and the refusal that ended the list, or None."""

    def handovers_taken(self, results: list[LocalEnqueueResult]) -> None:
        """The wake-ups for what :meth:`take_handovers` took (Trio thread)."""


class _GroupLocks:
    """One lock per group id, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[GroupId, tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, group_id: GroupId) -> AsyncIterator[None]:
        lock, users = self._locks.get(group_id, (None, 0))
        if lock is None:
            lock = trio.Lock()
        self._locks[group_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[group_id]
            if users == 1:
                del self._locks[group_id]
            else:
                self._locks[group_id] = (lock, users - 1)


class DsService:
    """The DS of one homeserver (module docstring). ``qs`` is the local QS's
    entry point for hand-overs, in two halves (:class:`QsHandover`)."""

    def __init__(self, core: DsCore, store: DsStore, qs: "QsHandover", clock):
        self.core = core
        self.store = store
        self.qs = qs
        self.clock = clock
        self._locks = _GroupLocks()
        self._handover = trio.Lock()       # one hand-over at a time keeps the outbox order
        self._pending = trio.Event()       # set when an entry stayed in the outbox
        #: sequence numbers of outbox entries the QS took whose rows are not
        #: deleted yet (module docstring); touched on the Trio thread only
        self._done: list[int] = []
        self._done_waiting = trio.Event()  # set when ``_done`` became non-empty
        self._crash_in = crash_countdown(os.environ.get(CRASH_ENV))   # tests only (module docstring)

    # --- requests -----------------------------------------------------------------------------

    async def request_group_id(self) -> m.RequestGroupIdResponse:
        """``#request-group-id``: sample until the id is free, enter a placeholder."""
        now = self.clock.now_ms()
        while True:
            gid = self.core.request_group_id()
            if await trio.to_thread.run_sync(self.store.add_placeholder, gid, now):
                return m.RequestGroupIdResponse(gid)

    async def create_group(self, req: m.CreateGroupRequest) -> m.Empty:
        gid = req.params.group_id
        async with self._locks.hold(gid):
            now = self.clock.now_ms()

            def work():
                outcome = self.core.create_group(req, self.store.has_placeholder(gid), now)
                self.store.store_outcome(gid, outcome, [], now, created=True)
                return outcome
            return (await trio.to_thread.run_sync(work)).response

    async def welcome_info(self, req: m.WelcomeInfoRequest) -> m.WelcomeInfoResponse:
        gid = req.params.group_id
        now = self.clock.now_ms()
        return await trio.to_thread.run_sync(lambda: self.core.welcome_info(req, self.store.read_group(gid), now))

    async def external_commit_info(self, req: m.ExternalCommitInfoParams) -> m.ExternalCommitInfoResponse:
        now = self.clock.now_ms()
        return await trio.to_thread.run_sync(
            lambda: self.core.external_commit_info(req, self.store.read_group(req.group_id), now))

    async def group_request(self, name: str, req: Any) -> Any:
        """A request that may change the group and fan out (module docstring)."""
        gid = group_id_of_request(req)
        handler = getattr(self.core, name.removeprefix("ds_"))
        async with self._locks.hold(gid), self._handover:
            now = self.clock.now_ms()
            done, self._done = self._done, []
            dropped = False

            def work():
                nonlocal dropped
                outcome = handler(req, self.store.read_group(gid), now)
                ids = [random_bytes(MESSAGE_ID_LEN) for _ in outcome.fan_outs]
                seqs = []
                if outcome.sealed_state is not None or outcome.delete_group or outcome.consumed_deleted \
                        or outcome.fan_outs:
                    seqs = self.store.store_outcome(gid, outcome, ids, now, outbox_done=done)
                    dropped = True
                entries = [OutboxEntry(s, i, fo) for s, i, fo in zip(seqs, ids, outcome.fan_outs)]
                self._crash_point(entries)
                return outcome, entries, self._take(entries)
            try:
                outcome, entries, (results, failure) = await trio.to_thread.run_sync(work)
            finally:
                if not dropped:       # nothing was written (or the write failed): they wait on
                    self._defer_done(done)
            await self._settle(entries, results, failure, defer_done=True)
        if outcome.error is not None:
            raise outcome.error
        return outcome.response

    def _crash_point(self, entries: list[OutboxEntry]) -> None:
        """The test crash point between the state write and the hand-over
        (module docstring): SIGKILL, so no cleanup and no answer."""
        if self._crash_in is None or not entries:
            return
        self._crash_in -= 1
        if self._crash_in == 0:
            log.critical("%s: killing this process after the state write", CRASH_ENV)
            os.kill(os.getpid(), signal.SIGKILL)

    # --- hand-over to the QS (decision A40) --------------------------------------------------------

    def _take(self, entries: list[OutboxEntry]) -> tuple[list[LocalEnqueueResult], Exception | None]:
        """Hand ``entries`` to the QS in order, in the calling worker thread:
        one QS call, one QS transaction for all of them. Returns the results
        of those it took and why it took no more (its refusal, which ends the
        list, or an error), or None."""
        if not entries:
            return [], None
        try:
            return self.qs.take_handovers([(e.message, e.message_id) for e in entries])
        except Exception as e:   # the entries stay in the outbox; _settle logs it
            return [], e

    async def _settle(self, entries: list[OutboxEntry], results: list[LocalEnqueueResult],
                      failure: Exception | None, *, defer_done: bool) -> None:
        """After :meth:`_take`, on the Trio thread under the hand-over lock:
        the QS's wake-ups, then the rows of the entries it took are deleted
        now, or, with ``defer_done`` and no QueueDeleted answer to store,
        with the next write (module docstring)."""
        if not entries:
            return
        self.qs.handovers_taken(results)
        done: list[int] = []
        deleted: list[tuple[GroupId, bytes]] = []
        try:
            deleted = await self._sealed([qd for r in results for qd in r.queue_deleted])
            done = [e.seq for e in entries[:len(results)]]
            if failure is not None:
                raise failure
        except Exception:
            log.exception("the local QS did not take a fan-out; it stays in the outbox")
            self._pending.set()
        finally:
            if defer_done and not deleted:
                self._defer_done(done)
            elif done or deleted:
                waiting, self._done = self._done, []
                try:
                    await trio.to_thread.run_sync(self.store.outbox_done, waiting + done, deleted)
                except BaseException:
                    self._defer_done(waiting)
                    raise

    async def _hand_over(self, entries: list[OutboxEntry]) -> None:
        """Hand ``entries`` to the QS in order and delete the rows of those it took."""
        if not entries:
            return
        async with self._handover:
            results, failure = await trio.to_thread.run_sync(self._take, entries)
            await self._settle(entries, results, failure, defer_done=False)

    def _defer_done(self, seqs: list[int]) -> None:
        if seqs:
            self._done.extend(seqs)
            self._done_waiting.set()

    async def flush_done(self) -> int:
        """Delete the rows of the handed-over entries that wait for a write
        (module docstring) now; returns how many."""
        waiting, self._done = self._done, []
        if waiting:
            try:
                await trio.to_thread.run_sync(self.store.outbox_done, waiting, [])
            except BaseException:
                self._defer_done(waiting)
                raise
        return len(waiting)

    async def _flush_done_forever(self) -> None:
        """Delete waiting rows at most ``DONE_FLUSH_DELAY_S`` after they began to wait."""
        while True:
            await self._done_waiting.wait()
            await trio.sleep(DONE_FLUSH_DELAY_S)
            self._done_waiting = trio.Event()
            try:
                await self.flush_done()
            except Exception:
                log.exception("deleting handed-over DS outbox entries failed; they are retried")

    async def _sealed(self, answers: list[QueueDeleted]) -> list[tuple[GroupId, bytes]]:
        """QueueDeleted answers sealed to their groups' Queue ID keys."""
        if not answers:
            return []
        keys = await trio.to_thread.run_sync(self.store.queue_id_keys, list({a.group_id for a in answers}))
        return [(a.group_id, DsCore.seal_deleted_queue(a.group_id, keys[a.group_id], a.client_queue_config))
                for a in answers if a.group_id in keys]

    async def queue_deleted(self, answers: list[QueueDeleted]) -> None:
        """Remote QSs' QueueDeleted answers (decision A30)."""
        rows = await self._sealed(answers)
        if rows:
            await trio.to_thread.run_sync(self.store.add_deleted_queues, rows)

    async def drain_outbox(self) -> int:
        """Hand every outbox entry to the QS, oldest first; the number left.
        Entries already handed over whose rows wait for deletion (module
        docstring) are deleted, not handed over again."""
        await self.flush_done()
        entries = await trio.to_thread.run_sync(self.store.outbox)
        await self._hand_over(entries)
        return len(await trio.to_thread.run_sync(self.store.outbox))

    async def refresh_padding(self) -> int:
        """Recompute the padding bucket from the stored sizes (A19), as
        :meth:`run` does at start; the homeserver's sweeper does it too."""
        sizes = await trio.to_thread.run_sync(self.store.state_sizes)
        return self.core.set_bucket(sizes)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Recompute the padding bucket, hand over what a crash left in the
        outbox, then retry failures every ``RETRY_INTERVAL_S`` until cancelled."""
        await self.refresh_padding()
        try:
            await self.drain_outbox()
        except ProtocolError:
            log.exception("handing over the DS outbox failed")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._flush_done_forever)
                task_status.started()
                while True:
                    await self._pending.wait()
                    await trio.sleep(RETRY_INTERVAL_S)
                    self._pending = trio.Event()
                    try:
                        if await self.drain_outbox():
                            self._pending.set()
                    except Exception:
                        log.exception("handing over the DS outbox failed")
                        self._pending.set()
        finally:
            # at shutdown, what waits is deleted before the store closes
            # (were it lost, the next start would hand it over once more, harmlessly)
            with trio.CancelScope(shield=True):
                try:
                    await self.flush_done()
                except Exception:
                    log.exception("deleting handed-over DS outbox entries at shutdown failed")

