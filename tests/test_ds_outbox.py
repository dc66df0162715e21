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

    async def local_enqueue_many(self, handovers) -> tuple[list[LocalEnqueueResult], None]:
        if self.refuse:
            raise OSError("the QS store is unavailable")
        for message, message_id in handovers:
            self.calls.append((bytes(message.message_content.message.private_message.ciphertext), message_id))
        return [LocalEnqueueResult() for _ in handovers], None


def crashed_store(path) -> tuple[DsStore, list[bytes]]:
    """A DS store as a crash leaves it: three fan-outs written, none handed over."""
    store = DsStore(path, OutboundKeys([bytes(range(32))]))
    ids = [bytes([i]) * 16 for i in range(3)]
    store.store_outcome(GROUP, Outcome(fan_outs=[fan_out([], GROUP, b"m%d" % i) for i in range(3)]), ids, 0)
    return store, ids


def service(store: DsStore, qs: RecordingQs) -> DsService:
    core = DsCore(DsConfig(Fqdn("a.example")), [])
    return DsService(core, store, qs.local_enqueue_many, FixedClock(0))


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

