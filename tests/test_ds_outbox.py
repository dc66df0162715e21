"""The DS outbox after a crash (decision A40) and the test crash point.

:class:`~phoenix_ref.delivery.service.DsService` writes a group's new state
and its fan-outs in one transaction and hands them to the QS afterwards. A
process that died in between left the entries in ``ds_outbox``; the next
:meth:`DsService.run` must hand them over before anything else, oldest
first, and drop them once the QS took them. A QS that refuses keeps them
for the retry loop. The real-process version of this (SIGKILL between the
write and the hand-over, three homeservers) is
``spec_tests/test_ds_crash.py``.
"""

from __future__ import annotations

import pytest
import trio

from phoenix_ref.clock import FixedClock
from phoenix_ref.delivery.core import DsConfig, DsCore, Outcome
from phoenix_ref.delivery.service import DsService, crash_countdown
from phoenix_ref.delivery.store import DsStore
from phoenix_ref.federation.outbound_crypto import OutboundKeys
from phoenix_ref.ids import Fqdn, GroupId
from phoenix_ref.queuing.core import LocalEnqueueResult
from phoenix_ref.spec_plugin import spec

from .qs_helpers import fan_out

DISTRIBUTION = "spec/delivery_service.md#message-distribution"
GROUP = GroupId.random("a.example")


class RecordingQs:
    """A local QS that records what it is handed; ``refuse`` makes it fail."""

    def __init__(self, refuse: bool = False):
        self.calls: list[tuple[bytes, bytes]] = []   # (body, message id)
        self.refuse = refuse
        self.taken = 0                               # results the wake-ups were given

    def take_handovers(self, handovers) -> tuple[list[LocalEnqueueResult], None]:
        if self.refuse:
            raise OSError("the QS store is unavailable")
        for message, message_id in handovers:
            self.calls.append((bytes(message.message_content.message.private_message.ciphertext), message_id))
        return [LocalEnqueueResult() for _ in handovers], None

    def handovers_taken(self, results) -> None:
        self.taken += len(results)


def crashed_store(path) -> tuple[DsStore, list[bytes]]:
    """A DS store as a crash leaves it: three fan-outs written, none handed over."""
    store = DsStore(path, OutboundKeys([bytes(range(32))]))
    ids = [bytes([i]) * 16 for i in range(3)]
    store.store_outcome(GROUP, Outcome(fan_outs=[fan_out([], GROUP, b"m%d" % i) for i in range(3)]), ids, 0)
    return store, ids


def service(store: DsStore, qs: RecordingQs) -> DsService:
    core = DsCore(DsConfig(Fqdn("a.example")), [])
    return DsService(core, store, qs, FixedClock(0))


@spec(DISTRIBUTION, "informative")
async def test_run_hands_over_what_a_crash_left_in_order_then_forgets_it(tmp_path):
    store, ids = crashed_store(tmp_path / "ds.sqlite3")
    qs = RecordingQs()
    async with trio.open_nursery() as nursery:
        await nursery.start(service(store, qs).run)      # started = the startup drain is done
        assert qs.calls == [(b"m0", ids[0]), (b"m1", ids[1]), (b"m2", ids[2])]
        assert store.outbox() == []
        nursery.cancel_scope.cancel()
    reopened = DsStore(tmp_path / "ds.sqlite3", OutboundKeys([bytes(range(32))]))
    assert reopened.outbox() == []                        # the deletion is on disk: no second hand-over


@spec(DISTRIBUTION, "informative")
async def test_entries_the_qs_refused_stay_in_the_outbox(tmp_path):
    store, ids = crashed_store(tmp_path / "ds.sqlite3")
    qs = RecordingQs(refuse=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(service(store, qs).run)
        assert [e.message_id for e in store.outbox()] == ids
        qs.refuse = False
        ds = service(store, qs)                           # as after the next restart
        assert await ds.drain_outbox() == 0
        assert [mid for _, mid in qs.calls] == ids
        nursery.cancel_scope.cancel()


@spec(DISTRIBUTION, "informative")
def test_crash_point_values():
    assert crash_countdown(None) is None
    assert crash_countdown("") is None
    assert crash_countdown("qs-something-else") is None   # another component's crash point
    assert crash_countdown("ds-after-state-write") == 1
    assert crash_countdown("ds-after-state-write:3") == 3
    for bad in ("ds-after-state-write:0", "ds-after-state-write:x"):
        with pytest.raises(ValueError):
            crash_countdown(bad)



# --- deletion of handed-over entries with the next write (docs/decisions.md,
# "DS outbox entries dropped with the next write") -------------------------------------------------

class _Request:
    """A DS request as far as the service looks at it: the group it acts on."""

    def __init__(self, body: bytes):
        self.group_id, self.body = GROUP, body


class _StubCore:
    """A DS core whose ``send_message`` writes a new state and fans out the
    request's body; ``fail`` makes it raise instead."""

    def __init__(self):
        self.fail = False

    def set_bucket(self, sizes):
        return 0

    def send_message(self, req, row, now_ms):
        assert row is not None
        if self.fail:
            raise ValueError("the core refused")
        return Outcome(sealed_state=b"state " + req.body, fan_outs=[fan_out([], GROUP, req.body)])


def store_with_group(path) -> DsStore:
    store = DsStore(path, OutboundKeys([bytes(range(32))]))
    store.add_placeholder(GROUP, 0)
    store.store_outcome(GROUP, Outcome(sealed_state=b"state", queue_id_key=b"k" * 32), [], 0, created=True)
    return store


def stub_service(store: DsStore, qs: RecordingQs) -> tuple[DsService, _StubCore]:
    core = _StubCore()
    return DsService(core, store, qs, FixedClock(0)), core


def transactions(store: DsStore) -> list[str]:
    begins: list[str] = []
    store.conn.set_trace_callback(lambda s: begins.append(s) if s.startswith("BEGIN") else None)
    return begins


def count_thread_calls(monkeypatch) -> list[str]:
    """The names of the functions run through ``trio.to_thread.run_sync`` from now on."""
    calls: list[str] = []
    real = trio.to_thread.run_sync

    async def counting(fn, *args, **kwargs):
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)
    monkeypatch.setattr(trio.to_thread, "run_sync", counting)
    return calls


@spec(DISTRIBUTION, "informative")
async def test_a_send_is_one_write_and_its_outbox_entry_goes_with_the_next_write(tmp_path, monkeypatch):
    store = store_with_group(tmp_path / "ds.sqlite3")
    qs = RecordingQs()
    ds, _ = stub_service(store, qs)
    begins = transactions(store)
    thread_calls = count_thread_calls(monkeypatch)
    await ds.group_request("ds_send_message", _Request(b"m1"))
    assert len(begins) == 1                               # the state and the outbox entry; no second write
    assert len(thread_calls) == 1                         # the write and the hand-over: one worker-thread call
    [first] = store.outbox()
    assert qs.calls == [(b"m1", first.message_id)]        # handed over, its row waits
    assert qs.taken == 1                                  # and the QS's wake-ups ran
    begins.clear()
    await ds.group_request("ds_send_message", _Request(b"m2"))
    assert len(begins) == 1
    [second] = store.outbox()                             # the first one went with this write
    assert second.seq != first.seq and qs.calls[1] == (b"m2", second.message_id)
    assert await ds.flush_done() == 1 and store.outbox() == []


@spec(DISTRIBUTION, "informative")
async def test_an_entry_whose_deletion_was_lost_is_handed_over_again_with_its_message_id(tmp_path):
    store = store_with_group(tmp_path / "ds.sqlite3")
    qs = RecordingQs()
    ds, _ = stub_service(store, qs)
    await ds.group_request("ds_send_message", _Request(b"m1"))
    store.close()                                         # a crash: the deletion never happened
    reopened = DsStore(tmp_path / "ds.sqlite3", OutboundKeys([bytes(range(32))]))
    qs_after = RecordingQs()
    async with trio.open_nursery() as nursery:
        await nursery.start(service(reopened, qs_after).run)
        # the same message id, which the QS remembers (it answers "duplicate" and enqueues nothing)
        assert qs_after.calls == qs.calls
        assert reopened.outbox() == []
        nursery.cancel_scope.cancel()


@spec(DISTRIBUTION, "informative")
async def test_waiting_deletions_are_written_by_run_without_a_next_request_and_at_shutdown(tmp_path, monkeypatch):
    from phoenix_ref.delivery import service as service_module
    monkeypatch.setattr(service_module, "DONE_FLUSH_DELAY_S", 0.01)
    store = store_with_group(tmp_path / "ds.sqlite3")
    ds, _ = stub_service(store, RecordingQs())
    async with trio.open_nursery() as nursery:
        await nursery.start(ds.run)
        await ds.group_request("ds_send_message", _Request(b"m1"))
        with trio.fail_after(10):
            while store.outbox():
                await trio.sleep(0.01)
        monkeypatch.setattr(service_module, "DONE_FLUSH_DELAY_S", 3600)
        await trio.sleep(0.05)                            # the flusher now waits an hour
        await ds.group_request("ds_send_message", _Request(b"m2"))
        assert len(store.outbox()) == 1
        nursery.cancel_scope.cancel()
    assert store.outbox() == []                           # shutdown wrote it


@spec(DISTRIBUTION, "informative")
async def test_a_request_that_writes_nothing_leaves_the_waiting_deletions_waiting(tmp_path):
    store = store_with_group(tmp_path / "ds.sqlite3")
    ds, core = stub_service(store, RecordingQs())
    await ds.group_request("ds_send_message", _Request(b"m1"))
    core.fail = True
    with pytest.raises(ValueError):
        await ds.group_request("ds_send_message", _Request(b"m2"))
    assert len(store.outbox()) == 1                       # not deleted, and not forgotten:
    assert await ds.flush_done() == 1 and store.outbox() == []


@spec(DISTRIBUTION, "informative")
async def test_a_hand_over_with_queue_deleted_answers_writes_them_and_the_waiting_deletions_at_once(tmp_path):
    from phoenix_ref.queuing.messages import ClientQueueConfig, QueueDeleted
    store = store_with_group(tmp_path / "ds.sqlite3")
    qs = RecordingQs()
    ds, _ = stub_service(store, qs)
    await ds.group_request("ds_send_message", _Request(b"m1"))
    inner = qs.take_handovers

    def enqueue_reporting_a_deleted_queue(handovers):
        results, refused = inner(handovers)
        for result in results:
            result.queue_deleted.append(QueueDeleted(ClientQueueConfig(Fqdn("b.example"), b"sealed"), GROUP))
        return results, refused
    qs.take_handovers = enqueue_reporting_a_deleted_queue
    await ds.group_request("ds_send_message", _Request(b"m2"))
    assert store.outbox() == []                           # both deletions written with the answer
    assert len(store.read_group(GROUP).deleted_queues) == 1
