"""Several QS-to-QS messages in one request (docs/decisions.md, "QS-to-QS
batches"): the QS core's QsToQsBatch (receiver and sender side), the
sender's reading of a batch answer, and several local hand-overs in one
transaction."""

from __future__ import annotations

import dataclasses
import os

import pytest

from phoenix_ref.codec import decode, encode
from phoenix_ref.crypto import SigningKey, hs_verify
from phoenix_ref.errors import Forbidden, Malformed, TooLarge
from phoenix_ref.federation.client import MalformedAnswer
from phoenix_ref.federation.outbound import Delivered, OutboundItem, Rejected, RetryLater
from phoenix_ref.ids import Fqdn, GroupId
from phoenix_ref.mls.messages import WireFormat
from phoenix_ref.queuing.core import QS_TO_QS_BATCH_LABEL, FederatedEnqueueResult, RateLimit, UnknownSourceKey
from phoenix_ref.queuing.messages import (
    MAX_BATCH_MESSAGES, BatchAccepted, DequeueMessagesParams, BatchRefused, FederatedEnqueueBatchResponse, FederatedEnqueueResponse,
    MessageContent, QsToQsBatch, QsToQsBatchEntry, QsToQsBatchTBS,
)
from phoenix_ref.queuing.service import QsService
from phoenix_ref.spec_plugin import spec

from tests.qs_helpers import NOW, Client, fan_out, make_core

FEDERATED = "spec/queuing_service.md#federated-qs-to-qs-communication"
GROUP = GroupId.random("a.example")


def received(client: Client) -> list[bytes]:
    """What arrived in the client's queue since it last looked."""
    params = DequeueMessagesParams(client.qs_cid, client.ratchet.generation, 1000)
    return client.read(client.core.dequeue_messages(client.request("dequeue_messages", params), NOW).messages)


def content(body: bytes, group=GROUP) -> bytes:
    return encode(fan_out([], group, body).message_content, MessageContent)


class Pair:
    """a.example sends to b.example (SQLite stores: commits are counted)."""

    def __init__(self, tmp_path, **b_config):
        self.a = make_core("a.example", sqlite_dir=tmp_path)
        self.b = make_core("b.example", sqlite_dir=tmp_path, **b_config)
        self.conn = self.b.records.connection
        self.bob = Client.register(self.b)
        received(self.bob)

    @property
    def keys(self) -> list[bytes]:
        return [self.a.keys.signing_key.public]

    def queue(self, body: bytes, *, configs=None, group=GROUP) -> OutboundItem:
        """One message from a's DS to bob; returns a's outbound item for b (taken out of a's queue)."""
        configs = configs if configs is not None else [self.bob.client_queue_config()]
        self.a.local_enqueue(fan_out(configs, group, body), NOW)
        [item] = self.a.outbound.batch("b.example", 1, 1 << 20)
        self.a.outbound.remove("b.example", item.seq)
        return item

    def batch(self, items: list[OutboundItem], now_ms: int = NOW) -> tuple[QsToQsBatch, bytes]:
        raw = self.a.frame_outbound_batch(items, now_ms)
        return decode(QsToQsBatch, raw), raw

    def deliver(self, items, now_ms: int = NOW):
        batch, raw = self.batch(items, now_ms)
        return self.b.federated_enqueue_batch(batch, now_ms, self.keys, received=raw)


def test_the_frame_is_signed_once_over_every_entry(tmp_path):
    p = Pair(tmp_path)
    items = [p.queue(b"one"), p.queue(b"two")]
    batch, raw = p.batch(items)
    assert (batch.source, batch.destination, batch.timestamp) == (Fqdn("a.example"), Fqdn("b.example"), NOW)
    assert [(e.message_id, e.payload) for e in batch.entries] == [(i.message_id, i.payload) for i in items]
    tbs = encode(QsToQsBatchTBS(batch.source, batch.destination, batch.timestamp, batch.entries))
    hs_verify(p.a.keys.signing_key.public, QS_TO_QS_BATCH_LABEL, tbs, batch.signature)
    assert encode(batch) == raw
    with pytest.raises(ValueError):   # one destination per batch
        p.a.frame_outbound_batch([items[0], dataclasses.replace(items[1], destination="c.example")], NOW)


@spec(FEDERATED, "informative")
def test_a_mixed_batch_gets_one_answer_per_message_in_one_transaction(tmp_path):
    """A fresh message, a replay of one delivered before, one for a deleted
    queue, one whose payload does not decode and one for another
    homeserver's group: each gets its own answer, the good ones are
    enqueued, and the receiver commits once for the whole batch."""
    p = Pair(tmp_path)
    gone = Client.register(p.b)
    gone_cfg = gone.client_queue_config()
    p.b.records.delete_user(gone.qs_uid)
    earlier = p.queue(b"earlier")
    first = p.deliver([earlier]).results[0]
    assert received(p.bob) == [content(b"earlier")]
    fresh, to_gone = p.queue(b"fresh"), p.queue(b"to gone", configs=[gone_cfg])
    garbage = OutboundItem("b.example", 0, os.urandom(16), b"\x05garbage", NOW)
    foreign = p.queue(b"foreign", group=GroupId.random("c.example"))

    commits = p.conn.commits
    results = p.deliver([fresh, earlier, to_gone, garbage, foreign]).results
    assert p.conn.commits == commits + 1                      # one transaction for the batch
    ok, replay, deleted, bad, not_owner = results
    assert isinstance(ok, FederatedEnqueueResult) and not ok.duplicate and ok.enqueued == [p.bob.qs_cid]
    assert replay.duplicate and replay.enqueued == [] and replay.response == first.response
    assert [q.client_queue_config for q in deleted.response.queue_deleted] == [gone_cfg]
    assert (bad.status, bad.code) == (400, "bad_payload")
    assert (not_owner.status, not_owner.code) == (403, "not_group_owner")
    assert received(p.bob) == [content(b"fresh")]             # once, and nothing else

    answer = decode(FederatedEnqueueBatchResponse, encode(
        FederatedEnqueueBatchResponse([BatchAccepted(r.response) if isinstance(r, FederatedEnqueueResult)
                                       else BatchRefused(r.status, r.code, r.message, 0) for r in results])))
    assert [type(r) for r in answer.results] == [BatchAccepted] * 3 + [BatchRefused] * 2
    # the refused ids were not taken: the same ids with good payloads go through
    again = p.deliver([dataclasses.replace(fresh, message_id=garbage.message_id, payload=p.queue(b"late").payload)])
    assert not again.results[0].duplicate and received(p.bob) == [content(b"late")]


def test_two_entries_with_one_id_are_enqueued_once(tmp_path):
    p = Pair(tmp_path)
    item = p.queue(b"twice")
    first, second = p.deliver([item, item]).results
    assert not first.duplicate and second.duplicate and second.response == first.response
    assert received(p.bob) == [content(b"twice")]


def test_a_failure_inside_the_transaction_leaves_nothing_of_the_batch(tmp_path):
    """All or nothing: a store failure while the third message is written
    rolls back the first two too, and remembers none of their ids, so the
    sender's retry delivers all three once."""
    p = Pair(tmp_path)
    items = [p.queue(b"m%d" % i) for i in range(3)]
    store = p.b.queues.store
    real, calls = store.append_many, [0]

    def fail_on_third(*a, **kw):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError("disk full")
        return real(*a, **kw)
    store.append_many = fail_on_third
    with pytest.raises(OSError):
        p.deliver(items)
    store.append_many = real
    assert received(p.bob) == []
    results = p.deliver(items).results
    assert [r.duplicate for r in results] == [False] * 3
    assert received(p.bob) == [content(b"m0"), content(b"m1"), content(b"m2")]


def test_the_request_as_a_whole_is_checked_once(tmp_path):
    p = Pair(tmp_path)
    items = [p.queue(b"x"), p.queue(b"y")]
    batch, raw = p.batch(items)
    with pytest.raises(UnknownSourceKey):                      # no key at hand: the caller fetches
        p.b.federated_enqueue_batch(batch, NOW, None)
    with pytest.raises(UnknownSourceKey):                      # a key that does not verify it
        p.b.federated_enqueue_batch(batch, NOW, [SigningKey.generate().public])
    tampered = dataclasses.replace(batch, entries=batch.entries[:1])
    with pytest.raises(UnknownSourceKey):                      # an entry dropped after signing
        p.b.federated_enqueue_batch(tampered, NOW, p.keys)
    with pytest.raises(Forbidden) as e:
        make_core("c.example").federated_enqueue_batch(batch, NOW, p.keys)
    assert e.value.code == "wrong_destination"
    with pytest.raises(Malformed) as e:
        p.b.federated_enqueue_batch(dataclasses.replace(batch, entries=[]), NOW, p.keys)
    assert e.value.code == "empty_batch"
    many = [QsToQsBatchEntry(os.urandom(16), batch.entries[0].payload)] * (MAX_BATCH_MESSAGES + 1)
    with pytest.raises(TooLarge) as e:
        p.b.federated_enqueue_batch(dataclasses.replace(batch, entries=many), NOW, p.keys)
    assert (e.value.status, e.value.code) == (413, "batch_too_large")
    assert received(p.bob) == []


def test_a_rate_limited_entry_and_all_behind_it_are_told_to_come_back(tmp_path):
    """429 with Retry-After for the entry over the limit, and the same for
    every entry behind it — even one for another queue — so that nothing
    reaches a queue ahead of a message the sender will send again."""
    p = Pair(tmp_path, rate_limit_per_queue=RateLimit(2))
    carol = Client.register(p.b)
    received(carol)
    items = [p.queue(b"m%d" % i) for i in range(3)] + [p.queue(b"c", configs=[carol.client_queue_config()])]
    results = p.deliver(items).results
    assert [isinstance(r, FederatedEnqueueResult) for r in results] == [True, True, False, False]
    assert [(r.status, r.code) for r in results[2:]] == [(429, "rate_limited")] * 2
    assert results[2].retry_after >= 1 and results[3].retry_after == results[2].retry_after
    assert received(p.bob) == [content(b"m0"), content(b"m1")]
    assert received(carol) == []


def _item(seq: int) -> OutboundItem:
    return OutboundItem("b.example", seq, bytes([seq]) * 16, b"p", NOW)


def test_the_sender_reads_one_outcome_per_message():
    items = [_item(i) for i in range(5)]
    answer = FederatedEnqueueBatchResponse([
        BatchAccepted(FederatedEnqueueResponse([])),
        BatchRefused(429, "rate_limited", "slow down", 7),
        BatchRefused(403, "not_group_owner", "no", 0),
        BatchRefused(409, "duplicate_message", "seen", 0),
        BatchRefused(503, "busy", "later", 0),
    ])
    delivered, limited, refused, duplicate, busy = QsService.batch_outcomes(items, encode(answer))
    assert delivered == Delivered(encode(FederatedEnqueueResponse([])))
    assert isinstance(limited, RetryLater) and limited.retry_after == 7
    assert isinstance(refused, Rejected) and (refused.status, refused.code) == (403, "not_group_owner")
    assert duplicate == Delivered(b"")
    assert isinstance(busy, RetryLater) and busy.retry_after is None
    with pytest.raises(MalformedAnswer):                       # not one result per message
        QsService.batch_outcomes(items[:4], encode(answer))
    with pytest.raises(MalformedAnswer):
        QsService.batch_outcomes(items, b"\x01\x02")


@spec("spec/queuing_service.md#local-enqueue-message", "informative")
def test_several_local_hand_overs_are_one_transaction_and_a_refusal_ends_the_list(tmp_path):
    p = Pair(tmp_path)
    bob = Client.register(p.a)
    received(bob)
    conn = p.a.records.connection
    ids = [os.urandom(16) for _ in range(4)]
    handovers = [(fan_out([bob.client_queue_config()], GROUP, b"h%d" % i), ids[i]) for i in range(2)]
    commits = conn.commits
    results, refused = p.a.local_enqueue_many(handovers + [handovers[0]], NOW)
    assert conn.commits == commits + 1 and refused is None
    assert [r.duplicate for r in results] == [False, False, True]
    assert received(bob) == [content(b"h0"), content(b"h1")]

    broken = fan_out([bob.client_queue_config()], GROUP, b"h3")
    broken = dataclasses.replace(broken, message_content=dataclasses.replace(
        broken.message_content, message=dataclasses.replace(broken.message_content.message,
                                                            wire_format=WireFormat.mls_key_package)))
    results, refused = p.a.local_enqueue_many(
        [(fan_out([bob.client_queue_config()], GROUP, b"h2"), ids[2]), (broken, ids[3]),
         (fan_out([bob.client_queue_config()], GROUP, b"never"), os.urandom(16))], NOW)
    assert len(results) == 1 and isinstance(refused, Malformed)
    assert received(bob) == [content(b"h2")]


@spec("spec/queuing_service.md#dequeue-messages", "informative")
def test_a_dequeue_returns_many_and_acknowledges_in_one_transaction(tmp_path):
    """A dequeue returns every waiting message (up to the bounds) and, in
    the same single commit, deletes those below its start: the messages the
    client got from the previous dequeue."""
    p = Pair(tmp_path)
    p.deliver([p.queue(b"m%d" % i) for i in range(5)])
    start = p.bob.ratchet.generation
    params = DequeueMessagesParams(p.bob.qs_cid, start, 1000)
    commits = p.conn.commits
    got = p.b.dequeue_messages(p.bob.request("dequeue_messages", params), NOW)
    assert p.conn.commits == commits + 1
    assert len(got.messages) == 5 and got.remaining_messages_number == 0
    after = got.messages[-1].sequence_number + 1
    params = DequeueMessagesParams(p.bob.qs_cid, after, 1000)
    commits = p.conn.commits
    assert p.b.dequeue_messages(p.bob.request("dequeue_messages", params), NOW).messages == []
    assert p.conn.commits == commits + 1
    assert p.b.queues.info(encode(p.bob.qs_cid)).message_count == 0   # the five are gone


async def test_a_peer_without_the_batch_endpoint_gets_the_messages_one_by_one():
    """A 404 to the batch request (an implementation that has no such row)
    is no refusal of the messages: each goes again alone, as a QsToQsMessage,
    and gets its own outcome."""
    from types import SimpleNamespace

    from phoenix_ref.federation.client import RemoteRefused
    from phoenix_ref.homeserver import _send_federated_batch

    posted: list[str] = []

    async def request(method, url, *, content, **kw):
        posted.append(url.rsplit("/", 1)[1])
        if url.endswith("/federated_enqueue_batch"):
            raise RemoteRefused("no such endpoint", status=404, code="unknown_endpoint")
        if b"bad" in content:
            raise RemoteRefused("not yours", status=403, code="not_group_owner")
        return encode(FederatedEnqueueResponse([]))

    async def discover(domain):
        return SimpleNamespace(base=lambda service: f"https://{service}.{domain}")

    core = make_core("a.example")
    svc = QsService(core, SimpleNamespace(now_ms=lambda: NOW))
    hs = SimpleNamespace(metrics=None, federation=SimpleNamespace(
        check_federates=lambda d: None, discovery=SimpleNamespace(discover=discover),
        fetcher=SimpleNamespace(request=request)))
    items = [OutboundItem("b.example", i, bytes([i]) * 16, p, NOW) for i, p in enumerate([b"ok", b"bad", b"ok2"])]
    outcomes = await _send_federated_batch(hs, svc, items)
    assert posted == ["federated_enqueue_batch"] + ["federated_enqueue"] * 3
    assert [type(o) for o in outcomes] == [Delivered, Rejected, Delivered]
    assert outcomes[1].code == "not_group_owner"
