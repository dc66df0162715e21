"""QsService (async shell), QueueNotifier, fan-out helpers and QS wire structs."""

from __future__ import annotations

import logging
import os

import pytest
import trio
import trio.testing

from phoenix_ref.clock import FixedClock
from phoenix_ref.codec import DecodeError, decode, encode
from phoenix_ref.crypto import SigningKey
from phoenix_ref.errors import ProtocolError, Unauthorized, UpstreamError
from phoenix_ref.federation.outbound import (
    Delivered, OutboundItem, OutboundSender, Rejected, RetryLater,
)
from phoenix_ref.ids import Fqdn, GroupId, QsCid, QsUid
from phoenix_ref.mls.extensions import ClientQueueConfig as ExtClientQueueConfig
from phoenix_ref.queuing.service import QsService, QueueNotifier
from phoenix_ref.spec_plugin import spec
from phoenix_ref.queuing.fanout import group_id_of, split_by_domain
from phoenix_ref.queuing.messages import (
    ClientQueueConfig, FanOutMessage, FederatedEnqueueResponse, QsToQsMessage, WelcomeBundle,
)
from phoenix_ref.mls.messages import Welcome

from tests.qs_helpers import NOW, Client, fan_out, make_core

GROUP = GroupId.random("a.example")


def test_client_queue_config_is_wire_identical_to_the_kp_extension():
    cqc = ClientQueueConfig(Fqdn("a.example"), os.urandom(50))
    ext = decode(ExtClientQueueConfig, encode(cqc))
    assert ext.client_homeserver_domain == b"a.example" and ext.sealed_config == cqc.sealed_config
    assert decode(ClientQueueConfig, encode(ext)) == cqc


def test_qs_to_qs_message_decoding_is_strict():
    a = make_core("a.example")
    b = make_core("b.example")
    bob = Client.register(b)
    a.local_enqueue(fan_out([bob.client_queue_config()], GROUP), NOW)
    data = a.frame_outbound(a.outbound.head("b.example"), NOW)
    assert encode(decode(QsToQsMessage, data)) == data
    for bad in (data + b"\x00", data[:-1], data[:40]):
        with pytest.raises(DecodeError):
            decode(QsToQsMessage, bad)


def test_split_by_domain_keeps_order_and_content():
    cfgs = [ClientQueueConfig(Fqdn(d), bytes([i])) for i, d in
            enumerate(["b.example", "a.example", "b.example", "c.example"])]
    msg = fan_out(cfgs, GROUP)
    parts = split_by_domain(msg)
    assert list(parts) == [Fqdn("b.example"), Fqdn("a.example"), Fqdn("c.example")]
    assert [c.sealed_config for c in parts[Fqdn("b.example")].client_queue_configs] == [b"\x00", b"\x02"]
    assert all(p.message_content == msg.message_content for p in parts.values())


def test_group_id_of_welcome_bundle_and_messages():
    assert group_id_of(fan_out([], GROUP)) == GROUP
    wb = WelcomeBundle(Welcome(1, [], b"x"), b"a", b"b", b"c", GROUP)
    assert group_id_of(FanOutMessage([], wb)) == GROUP


# --- websocket notifications ---------------------------------------------------------------------

async def test_notifier_wakes_only_the_right_queue_and_coalesces():
    n = QueueNotifier()
    a, b = QsCid.random(QsUid.random()), QsCid.random(QsUid.random())
    async with n.subscribe(a) as ra, n.subscribe(b) as rb:
        assert n.notify([a, a]) == 1
        assert n.notify([a]) == 0  # coalesced: one pending wake-up is enough
        assert ra.receive_nowait() is None
        with pytest.raises(trio.WouldBlock):
            rb.receive_nowait()
    assert n.listeners(a) == 0


async def test_service_local_enqueue_wakes_websocket():
    core = make_core("a.example")
    svc = QsService(core, FixedClock(NOW))
    alice = Client.register(core)
    woke = trio.Event()

    async def listener(task_status=trio.TASK_STATUS_IGNORED):
        async with svc.notifier.subscribe(alice.qs_cid) as ch:
            task_status.started()
            await ch.receive()
            woke.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(listener)
        result = await svc.local_enqueue(fan_out([alice.client_queue_config()], GROUP))
        assert result.enqueued == [alice.qs_cid]
        with trio.fail_after(5):
            await woke.wait()


# --- federated enqueue: the source's keys (#federated-qs-to-qs-communication) ------------------------

class FakeSourceKeys:
    """A remote key cache: ``published`` is what the remote QSs publish now,
    ``cache`` what was fetched last; every fetch is logged."""

    def __init__(self, published: dict[Fqdn, list[bytes]], *, cached: bool = True):
        self.published = published
        self.cache = dict(published) if cached else {}
        self.fetches: list[tuple[str, bool]] = []

    def cached(self, domain: Fqdn) -> list[bytes] | None:
        return self.cache.get(domain)

    async def fetch(self, domain: Fqdn, refresh: bool) -> list[bytes]:
        self.fetches.append((domain.value, refresh))
        if domain not in self.published:
            raise UpstreamError(f"cannot reach {domain}", code="source_unreachable")
        self.cache[domain] = list(self.published[domain])
        return self.cache[domain]


def _one_message(a, b_cid_cfg) -> QsToQsMessage:
    a.local_enqueue(fan_out([b_cid_cfg], GROUP), NOW)
    item = a.outbound.head("b.example")
    a.outbound.remove("b.example", item.seq)
    return decode(QsToQsMessage, a.frame_outbound(item, NOW))


async def test_cached_source_keys_need_no_fetch():
    a, b = make_core("a.example"), make_core("b.example")
    bob = Client.register(b)
    keys = FakeSourceKeys({Fqdn("a.example"): [a.keys.signing_key.public]})
    svc = QsService(b, FixedClock(NOW), source_keys=keys)
    result = await svc.federated_enqueue(_one_message(a, bob.client_queue_config()))
    assert result.enqueued == [bob.qs_cid] and keys.fetches == []


async def test_nothing_cached_fetches_once_without_refresh():
    a, b = make_core("a.example"), make_core("b.example")
    bob = Client.register(b)
    keys = FakeSourceKeys({Fqdn("a.example"): [a.keys.signing_key.public]}, cached=False)
    svc = QsService(b, FixedClock(NOW), source_keys=keys)
    await svc.federated_enqueue(_one_message(a, bob.client_queue_config()))
    assert keys.fetches == [("a.example", False)]


async def test_a_rotated_key_is_refetched_once_and_a_forgery_never_loops():
    """The cached key fails after the source rotated its key: one refresh,
    then the message is accepted. A signature no published key verifies
    is refused (401) after exactly one refresh per message."""
    a, b = make_core("a.example"), make_core("b.example")
    bob = Client.register(b)
    keys = FakeSourceKeys({Fqdn("a.example"): [SigningKey.generate().public]})   # stale cache
    keys.published[Fqdn("a.example")] = [a.keys.signing_key.public]
    svc = QsService(b, FixedClock(NOW), source_keys=keys)
    result = await svc.federated_enqueue(_one_message(a, bob.client_queue_config()))
    assert result.enqueued == [bob.qs_cid] and keys.fetches == [("a.example", True)]
    forger = make_core("a.example")
    with pytest.raises(Unauthorized) as e:
        await svc.federated_enqueue(_one_message(forger, bob.client_queue_config()))
    assert e.value.code == "bad_signature"
    assert keys.fetches == [("a.example", True), ("a.example", True)]


async def test_an_unreachable_source_is_a_502_and_nothing_is_enqueued():
    a, b = make_core("a.example"), make_core("b.example")
    bob = Client.register(b)
    from tests.test_qs_core import received
    received(bob)   # the initial ratchet key
    svc = QsService(b, FixedClock(NOW), source_keys=FakeSourceKeys({}))
    with pytest.raises(UpstreamError):
        await svc.federated_enqueue(_one_message(a, bob.client_queue_config()))
    assert received(bob) == []


async def test_without_a_key_source_federated_messages_are_refused():
    a, b = make_core("a.example"), make_core("b.example")
    bob = Client.register(b)
    with pytest.raises(Unauthorized):
        await QsService(b, FixedClock(NOW)).federated_enqueue(_one_message(a, bob.client_queue_config()))


# --- end to end: a.example's outbound queue to b.example's federated enqueue ---------------------------

class TwoQs:
    def __init__(self, tmp_path=None):
        self.clock = FixedClock(NOW)
        self.a = make_core("a.example", sqlite_dir=tmp_path)
        self.b = make_core("b.example")
        self.deleted = []
        self.svc_a = QsService(self.a, self.clock, on_queue_deleted=self.deleted.extend)
        self.keys = FakeSourceKeys({Fqdn("a.example"): [self.a.keys.signing_key.public]})
        self.svc_b = QsService(self.b, self.clock, source_keys=self.keys)
        self.up = True
        self.attempts = 0
        #: How many answers of b that get through are lost on their way back.
        self.lose_answers = 0

    async def send(self, item):
        """What the homeserver's federation client does: POST and map the answer."""
        self.attempts += 1
        if not self.up:
            raise OSError("connection refused")
        msg = decode(QsToQsMessage, self.svc_a.frame_outbound(item))
        try:
            result = await self.svc_b.federated_enqueue(msg)
        except ProtocolError as e:
            if e.status == 429:
                return RetryLater(e.code, e.retry_after)
            return Rejected(e.status, e.code)
        if self.lose_answers:
            self.lose_answers -= 1
            raise OSError("connection reset before the answer")
        return Delivered(encode(result.response))


@pytest.fixture
def patient_clock():
    """A MockClock that jumps only after 20 ms of real idleness: worker
    threads (SQLite, crypto) keep the run loop idle while they work, and a
    threshold of 0 would let virtual time run away meanwhile (firing attempt
    timeouts that never happened)."""
    return trio.testing.MockClock(autojump_threshold=0.02)


async def test_federated_delivery_end_to_end_with_queue_deleted_callback(patient_clock):
    t = TwoQs()
    bob, gone = Client.register(t.b), Client.register(t.b)
    gone_cfg = gone.client_queue_config()
    t.b.records.delete_user(gone.qs_uid)
    sender = OutboundSender(t.a.outbound, t.send, on_delivered=t.svc_a.on_delivered)
    t.svc_a.outbound_sender = sender
    async with trio.open_nursery() as nursery:
        await nursery.start(sender.run)
        result = await t.svc_a.local_enqueue(fan_out([bob.client_queue_config(), gone_cfg], GROUP, b"x"))
        assert result.forwarded == [Fqdn("b.example")]
        with trio.fail_after(60):
            while not t.deleted:
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert [d.client_queue_config for d in t.deleted] == [gone_cfg]
    assert t.a.outbound.destinations() == []
    from tests.test_qs_core import dequeue
    assert len(bob.read(dequeue(bob).messages)) == 1


@spec("spec/delivery_service.md#message-distribution", "informative")
@spec("spec/queuing_service.md#enqueuing-messages", "informative")
async def test_a_lost_answer_is_given_again_to_the_retry(patient_clock):
    """Decision A40: b took the message but its answer was lost; a's retry
    (same message id) enqueues nothing at b and gets b's first answer, so
    the QueueDeleted in it still reaches a's DS."""
    t = TwoQs()
    bob, gone = Client.register(t.b), Client.register(t.b)
    gone_cfg = gone.client_queue_config()
    t.b.records.delete_user(gone.qs_uid)
    t.lose_answers = 1
    sender = OutboundSender(t.a.outbound, t.send, on_delivered=t.svc_a.on_delivered)
    t.svc_a.outbound_sender = sender
    async with trio.open_nursery() as nursery:
        await nursery.start(sender.run)
        await t.svc_a.local_enqueue(fan_out([bob.client_queue_config(), gone_cfg], GROUP, b"x"))
        with trio.fail_after(600):
            while not t.deleted:
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert t.attempts == 2 and t.svc_b.stats["federated_enqueue_duplicates"] == 1
    assert [d.client_queue_config for d in t.deleted] == [gone_cfg]
    from tests.test_qs_core import dequeue
    assert len(bob.read(dequeue(bob).messages)) == 1   # once


def test_an_empty_answer_reports_nothing(caplog):
    """A 409 duplicate_message of another implementation counts as delivered
    with an empty answer: nothing to report, nothing to warn about; an
    answer that does not decode is still warned about."""
    deleted = []
    svc = QsService(make_core(), FixedClock(NOW), on_queue_deleted=deleted.extend)
    item = OutboundItem("b.example", 1, b"\x00" * 16, b"payload", NOW)
    with caplog.at_level(logging.DEBUG, logger="phoenix_ref.queuing.service"):
        svc.on_delivered(item, b"")
    assert deleted == [] and caplog.records == []
    with caplog.at_level(logging.WARNING, logger="phoenix_ref.queuing.service"):
        svc.on_delivered(item, b"\xff")
    assert deleted == [] and [r.levelname for r in caplog.records] == ["WARNING"]


async def test_net_split_heals_and_nothing_is_sent_twice(tmp_path, patient_clock):
    t = TwoQs(tmp_path)
    bob = Client.register(t.b)
    t.up = False
    sender = OutboundSender(t.a.outbound, t.send, on_delivered=t.svc_a.on_delivered)
    t.svc_a.outbound_sender = sender
    async with trio.open_nursery() as nursery:
        await nursery.start(sender.run)
        for i in range(3):
            await t.svc_a.local_enqueue(fan_out([bob.client_queue_config()], GROUP, b"%d" % i))
        with trio.fail_after(24 * 3600):  # a long split: retries keep failing
            while t.attempts <= 8:
                await trio.sleep(20)
        assert t.a.outbound.destinations() == ["b.example"]
        t.clock.advance(3 * 3600 * 1000)  # the wall clock moved on too: frames are re-signed fresh
        t.up = True
        with trio.fail_after(1000):
            while t.a.outbound.destinations():
                await trio.sleep(10)
        nursery.cancel_scope.cancel()
    from tests.test_qs_core import dequeue
    got = bob.read(dequeue(bob, now_ms=t.clock.now_ms()).messages)
    assert len(got) == 3
    assert [g[-1:] for g in got] == [b"0", b"1", b"2"]  # in order


def test_federated_enqueue_response_roundtrip():
    r = FederatedEnqueueResponse([])
    assert decode(FederatedEnqueueResponse, encode(r)) == r
