"""Durable per-destination outbound queues (phoenix_ref.federation.outbound)."""

from __future__ import annotations

import random
import sqlite3

import pytest
import trio

from phoenix_ref import cli
from phoenix_ref.federation import outbound_admin
from phoenix_ref.federation.client import (
    BadCertificate, MalformedAnswer, NotFederated, NotTls, RemoteRefused, Unreachable,
)
from phoenix_ref.federation.outbound import (
    BackoffPolicy, BatchLimits, Delivered, MemoryOutboundStore, OutboundItem, OutboundSender, Parked, Rejected,
    RetryLater,
    SqliteOutboundStore, outcome_of_failure,
)
from phoenix_ref.federation.outbound_crypto import OutboundKeyError, OutboundKeys
from phoenix_ref.spec_plugin import spec
from phoenix_ref.cli import generate_config

KEYS = OutboundKeys([b"\x01" * 32])


class FakeRemote:
    """Scripted receiver: per destination, a list of outcomes to return in turn
    (the last one repeats); records (time, destination, payload) of each call."""

    def __init__(self, script: dict[str, list]):
        self.script = {d: list(s) for d, s in script.items()}
        self.calls: list[tuple[float, str, bytes]] = []

    async def send(self, item):
        self.calls.append((trio.current_time(), item.destination, item.payload))
        outs = self.script.get(item.destination, [Delivered()])
        out = outs.pop(0) if len(outs) > 1 else outs[0]
        if isinstance(out, Exception):
            raise out
        return out


async def _wait_until(pred, step=0.5, limit=100_000):
    for _ in range(limit):
        if pred():
            return
        await trio.sleep(step)
    raise AssertionError("condition never became true")


@pytest.mark.trio
async def test_in_order_delivery_and_removal(autojump_clock):
    store = MemoryOutboundStore()
    remote = FakeRemote({})
    delivered = []
    sender = OutboundSender(store, remote.send, on_delivered=lambda i, r: delivered.append(i.payload))
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        for k in range(5):
            await sender.submit("b.example", bytes([k]) * 16, b"m%d" % k, 0)
        await _wait_until(lambda: len(delivered) == 5)
        n.cancel_scope.cancel()
    assert delivered == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert store.destinations() == []


@pytest.mark.trio
async def test_backoff_grows_exponentially_with_jitter(autojump_clock):
    store = MemoryOutboundStore()
    remote = FakeRemote({"b.example": [OSError("refused")] * 5 + [Delivered()]})
    policy = BackoffPolicy(base_delay=1.0, factor=2.0, max_delay=100.0, jitter=0.5)
    sender = OutboundSender(store, remote.send, policy=policy, rng=random.Random(7))
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        await sender.submit("b.example", b"\x01" * 16, b"x", 0)
        await _wait_until(lambda: store.destinations() == [])
        n.cancel_scope.cancel()
    times = [t for t, _, _ in remote.calls]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) == 5
    for k, gap in enumerate(gaps):
        nominal = 2.0 ** k
        assert nominal * 0.5 - 1e-6 <= gap <= nominal + 1e-6, (k, gap)
    # jitter: the gaps are not exactly the nominal powers of two
    assert any(abs(g - 2.0 ** k) > 1e-3 for k, g in enumerate(gaps))


@pytest.mark.trio
async def test_retry_after_is_honoured_for_429_and_5xx(autojump_clock):
    store = MemoryOutboundStore()
    remote = FakeRemote({"b.example": [RetryLater("429", retry_after=42.0),
                                       RetryLater("503", retry_after=7.0), Delivered()]})
    sender = OutboundSender(store, remote.send, policy=BackoffPolicy(base_delay=1.0))
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        await sender.submit("b.example", b"\x01" * 16, b"x", 0)
        await _wait_until(lambda: store.destinations() == [])
        n.cancel_scope.cancel()
    times = [t for t, _, _ in remote.calls]
    assert [round(b - a, 6) for a, b in zip(times, times[1:])] == [42.0, 7.0]


@pytest.mark.trio
async def test_failing_destination_does_not_delay_others(autojump_clock):
    store = MemoryOutboundStore()
    remote = FakeRemote({"down.example": [OSError("unreachable")]})
    delivered = []
    sender = OutboundSender(store, remote.send, on_delivered=lambda i, r: delivered.append(
        (trio.current_time(), i.destination)))
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        start = trio.current_time()
        await sender.submit("down.example", b"\x01" * 16, b"x", 0)
        await trio.sleep(500)  # the down destination is deep in backoff now
        t0 = trio.current_time()
        await sender.submit("up.example", b"\x02" * 16, b"y", 0)
        await _wait_until(lambda: delivered)
        n.cancel_scope.cancel()
    assert delivered[0][1] == "up.example"
    assert delivered[0][0] - t0 < 1.0
    assert store.destinations() == ["down.example"]
    assert sender.pending_failures("down.example") >= 3
    assert start < t0


@pytest.mark.trio
async def test_head_of_line_blocks_only_its_destination_and_keeps_order(autojump_clock):
    store = MemoryOutboundStore()
    remote = FakeRemote({"b.example": [OSError("x"), OSError("x"), Delivered()]})
    order = []
    sender = OutboundSender(store, remote.send, on_delivered=lambda i, r: order.append(i.payload))
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        await sender.submit("b.example", b"\x01" * 16, b"first", 0)
        await sender.submit("b.example", b"\x02" * 16, b"second", 0)
        await _wait_until(lambda: len(order) == 2)
        n.cancel_scope.cancel()
    assert order == [b"first", b"second"]
    # "second" was never attempted before "first" was delivered
    payloads = [p for _, _, p in remote.calls]
    assert payloads.index(b"second") > max(i for i, p in enumerate(payloads) if p == b"first")


@pytest.mark.trio
async def test_rejected_goes_to_the_dead_letters_and_is_reported(autojump_clock, caplog):
    store = MemoryOutboundStore()
    remote = FakeRemote({"b.example": [Rejected(403, "denied", "domain_not_allowed"), Delivered(b"ok")]})
    rejected, delivered = [], []
    sender = OutboundSender(store, remote.send, now_ms=lambda: 1234,
                            on_delivered=lambda i, r: delivered.append((i.payload, r)),
                            on_rejected=lambda i, o: rejected.append((i.payload, o.status)))
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        await sender.submit("b.example", b"\x01" * 16, b"a", 0)
        await sender.submit("b.example", b"\x02" * 16, b"b", 0)
        await _wait_until(lambda: delivered)
        n.cancel_scope.cancel()
    assert rejected == [(b"a", 403)]
    assert delivered == [(b"b", b"ok")]
    assert len(remote.calls) == 2
    [dead] = store.dead_letters
    assert (dead.destination, dead.message_id, dead.status, dead.code, dead.message, dead.rejected_ms) == \
        ("b.example", b"\x01" * 16, 403, "domain_not_allowed", "denied", 1234)
    assert sender.stats["dead_lettered"] == 1 and sender.stats["delivered"] == 1
    [warning] = [r for r in caplog.records if "dead letters" in r.getMessage()]
    assert warning.levelname == "WARNING" and "b.example" in warning.getMessage()


@pytest.mark.trio
async def test_hanging_receiver_times_out_and_is_retried(autojump_clock):
    store = MemoryOutboundStore()
    calls = []

    async def send(item):
        calls.append(trio.current_time())
        if len(calls) == 1:
            await trio.sleep_forever()
        return Delivered()

    sender = OutboundSender(store, send, policy=BackoffPolicy(attempt_timeout=10, base_delay=1, jitter=0))
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        await sender.submit("b.example", b"\x01" * 16, b"a", 0)
        await _wait_until(lambda: store.destinations() == [])
        n.cancel_scope.cancel()
    assert len(calls) == 2
    assert calls[1] - calls[0] == pytest.approx(11.0)


def test_backoff_policy_caps_and_jitter_bounds():
    policy = BackoffPolicy(base_delay=2, factor=3, max_delay=60, jitter=0.25)
    rng = random.Random(1)
    for failures in range(1, 30):
        d = policy.delay(failures, rng)
        nominal = min(60, 2 * 3 ** (failures - 1))
        assert 0.75 * nominal <= d <= nominal
    assert policy.delay(3, rng, retry_after=12.5) == 12.5
    assert policy.delay(3, rng, retry_after=10 ** 9) == policy.max_retry_after
    # a long outage (default policy: about four days at the cap) must not overflow the float power
    for failures in (1100, 10 ** 6):
        assert 30.0 <= BackoffPolicy().delay(failures, rng) <= 300.0


@pytest.mark.trio
async def test_restart_resumes_pending_and_sends_none_twice(tmp_path, autojump_clock):
    db = str(tmp_path / "qs.sqlite3")
    store = SqliteOutboundStore(db, keys=KEYS)
    sent: list[bytes] = []

    async def send_never(item):
        raise OSError("net split")

    first = OutboundSender(store, send_never)
    async with trio.open_nursery() as n:
        await n.start(first.run)
        await first.submit("b.example", b"\x01" * 16, b"one", 0)
        await first.submit("c.example", b"\x02" * 16, b"two", 0)
        await first.submit("b.example", b"\x03" * 16, b"three", 0)
        await trio.sleep(30)
        n.cancel_scope.cancel()
    store.close()

    # "restart": a new process opens the same file
    store2 = SqliteOutboundStore(db, keys=KEYS)
    assert store2.destinations() == ["b.example", "c.example"]

    async def send_ok(item):
        sent.append(item.payload)
        return Delivered()

    second = OutboundSender(store2, send_ok)
    async with trio.open_nursery() as n:
        await n.start(second.run)
        await _wait_until(lambda: store2.destinations() == [])
        await trio.sleep(60)
        n.cancel_scope.cancel()
    assert sorted(sent) == [b"one", b"three", b"two"]
    assert sent.index(b"one") < sent.index(b"three")
    store2.close()

    # and a third start finds nothing left to send
    store3 = SqliteOutboundStore(db, keys=KEYS)
    assert store3.destinations() == []
    assert store3.head("b.example") is None
    store3.close()


def test_sqlite_store_joins_an_owner_transaction(tmp_path):
    import threading
    conn = sqlite3.connect(str(tmp_path / "x.db"), isolation_level=None, check_same_thread=False)
    lock = threading.RLock()
    store = SqliteOutboundStore(conn, lock, keys=KEYS)
    conn.execute("BEGIN")
    store.append("b.example", b"\x01" * 16, b"p", 1)
    conn.execute("ROLLBACK")
    assert store.destinations() == []
    conn.execute("BEGIN")
    seq = store.append("b.example", b"\x01" * 16, b"p", 1)
    conn.execute("COMMIT")
    item = store.head("b.example")
    assert item is not None and item.seq == seq and item.payload == b"p" and item.enqueued_ms == 1


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_remove_returns_the_next_head(tmp_path, kind):
    """A sender removes a delivered item and learns what comes next in one call."""
    store = MemoryOutboundStore() if kind == "memory" else SqliteOutboundStore(str(tmp_path / "o.db"), keys=KEYS)
    first = store.append("b.example", b"\x01" * 16, b"one", 1)
    second = store.append("b.example", b"\x02" * 16, b"two", 2)
    store.append("c.example", b"\x03" * 16, b"other", 3)
    nxt = store.remove("b.example", first)
    assert (nxt.seq, nxt.payload) == (second, b"two")
    assert store.remove("b.example", second) is None
    assert store.head("c.example").payload == b"other"
    if kind == "sqlite":
        store.close()


# --- batches of a backlog (docs/decisions.md, "QS-to-QS batches") --------------------------------

class BatchRemote:
    """A receiver that is down until ``up`` is set; records every request:
    ("one", [payload]) for ``send``, ("batch", [payloads]) for ``send_batch``.
    ``answer(payload)`` gives each message's outcome once it is up."""

    def __init__(self, answer=lambda payload: Delivered(), delay: float = 0.0):
        self.requests: list[tuple[str, list[bytes]]] = []
        self.up = trio.Event()
        self.answer = answer
        self.delay = delay            # seconds each request takes once the receiver is up

    async def send(self, item):
        self.requests.append(("one", [item.payload]))
        if not self.up.is_set():
            raise Unreachable("down")
        await trio.sleep(self.delay)
        return self.answer(item.payload)

    async def send_batch(self, items):
        self.requests.append(("batch", [i.payload for i in items]))
        if not self.up.is_set():
            raise Unreachable("down")
        await trio.sleep(self.delay)
        return [self.answer(i.payload) for i in items]


def _batch_sender(store, remote, limits=BatchLimits(100, 1 << 20), **kw):
    return OutboundSender(store, remote.send, send_batch=remote.send_batch, batch_limits=limits,
                          policy=BackoffPolicy(base_delay=1.0, max_delay=5.0, jitter=0), **kw)


@pytest.mark.trio
async def test_a_lone_message_goes_at_once_and_alone(autojump_clock):
    store, remote = MemoryOutboundStore(), BatchRemote()
    remote.up.set()
    sender = _batch_sender(store, remote)
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        t0 = trio.current_time()
        await sender.submit("b.example", b"\x01" * 16, b"lone", 0)
        await _wait_until(lambda: store.destinations() == [], step=0.001)
        assert trio.current_time() - t0 < 0.01                  # no timer waited for company
        n.cancel_scope.cancel()
    assert remote.requests == [("one", [b"lone"])]


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_backlog_goes_in_batches_up_to_the_bounds(tmp_path, autojump_clock, kind):
    """While the destination is down 20 messages queue up; once it is back
    they go in order, in batches of at most 7 (the count bound)."""
    store = MemoryOutboundStore() if kind == "memory" else SqliteOutboundStore(str(tmp_path / "o.db"), keys=KEYS)
    remote = BatchRemote()
    delivered = []
    sender = _batch_sender(store, remote, BatchLimits(7, 1 << 20), on_delivered=lambda i, r: delivered.append(i.payload))
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        for k in range(20):
            await sender.submit("b.example", bytes([k]) * 16, b"m%02d" % k, 0)
        await _wait_until(lambda: sender.pending_failures("b.example") >= 2)
        remote.up.set()
        await _wait_until(lambda: len(delivered) == 20)
        n.cancel_scope.cancel()
    assert delivered == [b"m%02d" % k for k in range(20)]
    sent_up = [payloads for kind_, payloads in remote.requests[-3:]]
    assert [len(p) for p in sent_up] == [7, 7, 6] and sum(sent_up, []) == delivered
    assert sender.stats["attempts"] == len(remote.requests)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_batch_is_bounded_by_bytes_but_always_holds_the_head(tmp_path, kind):
    store = MemoryOutboundStore() if kind == "memory" else SqliteOutboundStore(str(tmp_path / "o.db"), keys=KEYS)
    for k, size in enumerate([50, 30, 30, 10]):
        store.append("b.example", bytes([k]) * 16, b"x" * size, k)
    assert [len(i.payload) for i in store.batch("b.example", 10, 80)] == [50, 30]
    assert [len(i.payload) for i in store.batch("b.example", 10, 10)] == [50]        # the head, whatever its size
    assert [len(i.payload) for i in store.batch("b.example", 3, 1000)] == [50, 30, 30]
    assert store.batch("c.example", 10, 1000) == []


async def _stream(linger_s: float) -> tuple[list[tuple[str, list[bytes]]], list[bytes], float]:
    """60 messages to a receiver that takes 30 ms per request, one every
    10 ms: the requests, the delivered payloads, and how long the first
    (lone) message took."""
    store, remote = MemoryOutboundStore(), BatchRemote(delay=0.03)
    remote.up.set()
    delivered: list[bytes] = []
    sender = _batch_sender(store, remote, BatchLimits(100, 1 << 20, linger_s=linger_s),
                           on_delivered=lambda i, r: delivered.append(i.payload))
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        t0 = trio.current_time()
        for k in range(60):
            await sender.submit("b.example", bytes([k]) * 16, b"m%02d" % k, 0)
            if k == 0:
                await _wait_until(lambda: delivered, step=0.001)
                first = trio.current_time() - t0
            else:
                await trio.sleep(0.01)
        await _wait_until(lambda: len(delivered) == 60, step=0.001)
        n.cancel_scope.cancel()
    return remote.requests, delivered, first


@pytest.mark.trio
async def test_under_a_backlog_the_next_batch_lingers_to_fill(autojump_clock):
    """With a linger of 100 ms, once an attempt carried more than one
    message the next batch waits to fill: far fewer requests for the same
    stream, the same order, and the first message (no backlog) still at once."""
    eager, eager_delivered, eager_first = await _stream(0.0)
    lingering, delivered, first = await _stream(0.1)
    order = [b"m%02d" % k for k in range(60)]
    assert eager_delivered == delivered == order
    assert [p for _, ps in lingering for p in ps] == order                 # every message sent once, in order
    assert first < 0.05 and eager_first < 0.05                             # 30 ms: the request alone
    assert max(len(ps) for _, ps in lingering) >= 8 > max(len(ps) for _, ps in eager)
    assert len(lingering) * 2 < len(eager)


@pytest.mark.trio
async def test_the_linger_ends_as_soon_as_enough_messages_wait(autojump_clock):
    """A linger of 10 s that ends once 5 messages wait: a stream of one
    message every 10 ms to a receiver taking 30 ms per request leaves in
    batches of at least 5, each within a fraction of a second rather
    than 10 s; only the stream's tail, fewer than 5, waits the whole linger."""
    store, remote = MemoryOutboundStore(), BatchRemote(delay=0.03)
    remote.up.set()
    sent_at: dict[bytes, float] = {}
    delivered_at: dict[bytes, float] = {}
    sender = _batch_sender(store, remote, BatchLimits(100, 1 << 20, linger_s=10.0, gather=5),
                           on_delivered=lambda i, r: delivered_at.setdefault(i.payload, trio.current_time()))
    order = [b"m%02d" % k for k in range(60)]
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        for payload in order:
            sent_at[payload] = trio.current_time()
            await sender.submit("b.example", payload[1:] * 8, payload, 0)
            await trio.sleep(0.01)
        await _wait_until(lambda: len(delivered_at) == 60, step=0.01)
        n.cancel_scope.cancel()
    batches = [ps for _, ps in remote.requests]
    assert [p for ps in batches for p in ps] == order                      # every message once, in order
    lingered = batches[2:]                                                 # after a lone one and a first batch
    assert all(len(ps) >= 5 for ps in lingered[:-1]) and len(lingered[-1]) < 5
    waits = {p: delivered_at[p] - sent_at[p] for p in order}
    assert max(waits[p] for ps in batches[:-1] for p in ps) < 0.2
    assert all(10.0 <= waits[p] < 10.2 for p in batches[-1])


@pytest.mark.trio
async def test_a_lone_message_after_a_backlog_does_not_linger(autojump_clock):
    """The linger follows a batch of several only while more wait: once
    the queue is empty, the next lone message goes at once."""
    store, remote = MemoryOutboundStore(), BatchRemote()
    delivered: list[bytes] = []
    sender = _batch_sender(store, remote, BatchLimits(100, 1 << 20, linger_s=10.0),
                           on_delivered=lambda i, r: delivered.append(i.payload))
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        for k in range(3):                                        # a backlog while the receiver is down
            await sender.submit("b.example", bytes([k]) * 16, b"m%d" % k, 0)
        await _wait_until(lambda: sender.pending_failures("b.example") >= 1)
        remote.up.set()
        await _wait_until(lambda: len(delivered) == 3)
        t0 = trio.current_time()
        await sender.submit("b.example", b"\x09" * 16, b"lone", 0)
        await _wait_until(lambda: len(delivered) == 4, step=0.001)
        assert trio.current_time() - t0 < 0.01
        n.cancel_scope.cancel()
    assert remote.requests[-2:] == [("batch", [b"m0", b"m1", b"m2"]), ("one", [b"lone"])]


def test_a_full_batch_is_full_by_count_or_by_bytes():
    limits = BatchLimits(3, 100, linger_s=1.0)
    item = lambda size: OutboundItem("b.example", 0, b"\x00" * 16, b"x" * size, 0)   # noqa: E731
    assert not limits.full([item(10), item(10)])
    assert limits.full([item(10)] * 3)
    assert limits.full([item(60), item(40)])


@pytest.mark.trio
async def test_each_message_of_a_batch_has_its_own_outcome(autojump_clock):
    """Delivered leave, a refused one goes to the dead letters alone, one
    told to retry stays at the head with everything behind it (taken or
    not) and goes again after the backoff: the queue leaves in order."""
    tries: dict[bytes, int] = {}

    def answer(payload):
        tries[payload] = tries.get(payload, 0) + 1
        if payload == b"bad":
            return Rejected(403, "not yours", "not_group_owner")
        if payload == b"slow" and tries[payload] == 1:
            return RetryLater("429 rate_limited", 3)
        return Delivered()

    store, remote = MemoryOutboundStore(), BatchRemote(answer)
    delivered = []
    sender = _batch_sender(store, remote, on_delivered=lambda i, r: delivered.append(i.payload))
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        for k, p in enumerate([b"ok1", b"bad", b"slow", b"ok2"]):
            await sender.submit("b.example", bytes([k]) * 16, p, 0)
        await _wait_until(lambda: sender.pending_failures("b.example") >= 1)   # the first (down) attempt failed
        remote.up.set()
        await _wait_until(lambda: store.destinations() == [])
        n.cancel_scope.cancel()
    assert delivered == [b"ok1", b"slow", b"ok2"]
    assert [(d.code, d.status) for d in store.dead_letters] == [("not_group_owner", 403)]
    last = remote.requests[-2:]
    assert last[0] == ("batch", [b"ok1", b"bad", b"slow", b"ok2"]) and last[1] == ("batch", [b"slow", b"ok2"])
    assert sender.stats["dead_lettered"] == 1 and sender.stats["delivered"] == 3


# --- what an answer means -----------------------------------------------------------------

@pytest.mark.parametrize("error, expected", [
    (RemoteRefused("dup", status=409, code="duplicate_message"), Delivered(b"")),
    (RemoteRefused("slow down", status=429, code="rate_limited", retry_after=12),
     RetryLater("429 rate_limited", 12)),
    (RemoteRefused("down", status=503, code="unavailable", retry_after=3), RetryLater("503 unavailable", 3)),
    (RemoteRefused("boom", status=500), RetryLater("500 None", None)),
    (RemoteRefused("other conflict", status=409, code="record_exists"),
     Rejected(409, "other conflict", "record_exists")),
    (RemoteRefused("stale", status=401, code="message_expired"), Rejected(401, "stale", "message_expired")),
    (RemoteRefused("gone", status=404), Rejected(404, "gone", None)),
    (NotFederated("b.example is denied"), Rejected(403, "b.example is denied", "domain_not_allowed")),
])
def test_outcome_of_a_federation_answer(error, expected):
    assert outcome_of_failure(error) == expected


@pytest.mark.parametrize("error", [
    Unreachable("connection refused"), BadCertificate("wrong name"), NotTls("http"),
    MalformedAnswer("not a FederatedEnqueueResponse"), ConnectionResetError("reset"), OSError("no route"),
])
def test_network_and_tls_failures_are_retried(error):
    outcome = outcome_of_failure(error)
    assert isinstance(outcome, RetryLater) and type(error).__name__ in outcome.reason


@pytest.mark.parametrize("error", [KeyError("x"), TypeError("bad call"), ValueError("bug"), AssertionError()])
def test_anything_else_is_a_programming_error(error):
    assert outcome_of_failure(error) is None


# --- programming errors park their destination --------------------------------------------

@pytest.mark.trio
async def test_a_programming_error_parks_its_destination_only(autojump_clock, caplog):
    store = MemoryOutboundStore()
    remote = FakeRemote({"bug.example": [KeyError("missing key"), Delivered(b"fixed")]})
    delivered = []
    sender = OutboundSender(store, remote.send, now_ms=lambda: 5000,
                            policy=BackoffPolicy(park_check_interval=60),
                            on_delivered=lambda i, r: delivered.append(i.destination))
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        await sender.submit("bug.example", b"\x01" * 16, b"x", 0)
        await sender.submit("ok.example", b"\x02" * 16, b"y", 0)
        await _wait_until(lambda: sender.is_parked("bug.example") and delivered)
        await trio.sleep(3600)   # parked: no attempt however long we wait
        assert [d for _, d, _ in remote.calls].count("bug.example") == 1
        assert delivered == ["ok.example"]
        assert store.parked() == {"bug.example": Parked("KeyError: 'missing key'", 5000)}
        assert sender.stats["programming_errors"] == 1
        [record] = [r for r in caplog.records if "programming error" in r.getMessage()]
        assert record.levelname == "ERROR" and record.exc_info[0] is KeyError   # with its traceback
        assert await sender.unpark("bug.example")
        await _wait_until(lambda: "bug.example" in delivered)
        n.cancel_scope.cancel()
    assert store.parked() == {} and store.destinations() == [] and not sender.is_parked("bug.example")


@pytest.mark.trio
async def test_a_send_that_returns_no_outcome_parks(autojump_clock):
    store = MemoryOutboundStore()

    async def send(item):
        return "delivered, I think"

    sender = OutboundSender(store, send)
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        await sender.submit("b.example", b"\x01" * 16, b"x", 0)
        await _wait_until(lambda: sender.is_parked("b.example"))
        n.cancel_scope.cancel()
    assert "TypeError" in store.parked()["b.example"].reason
    assert store.destinations() == ["b.example"]   # the message waits, nothing is lost


@pytest.mark.trio
async def test_an_operator_unpark_in_the_store_is_noticed_and_a_restart_retries(tmp_path, autojump_clock):
    db = str(tmp_path / "qs.sqlite3")
    store = SqliteOutboundStore(db, keys=KEYS)
    remote = FakeRemote({"b.example": [ValueError("bug"), ValueError("bug again"), Delivered()]})
    sender = OutboundSender(store, remote.send, policy=BackoffPolicy(park_check_interval=30))
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        await sender.submit("b.example", b"\x01" * 16, b"x", 0)
        await _wait_until(lambda: sender.is_parked("b.example"))
        assert "ValueError: bug" == store.parked()["b.example"].reason
        operator = SqliteOutboundStore(db, keys=None)   # what `phoenix-ref admin … outbound --unpark` does
        assert operator.unpark("b.example")
        operator.close()
        assert len(remote.calls) == 1
        # the sender looks at the store again (every park_check_interval), sends,
        # and parks again on the second bug. No bound on the virtual time it
        # takes: the autojump clock runs on while the store's worker threads
        # do, so on a busy machine virtual seconds pass without meaning.
        await _wait_until(lambda: len(remote.calls) == 2 and sender.is_parked("b.example"))
        n.cancel_scope.cancel()
    assert store.parked()["b.example"].reason == "ValueError: bug again"
    # a restart (a fix deployed) tries the parked destination again
    second = OutboundSender(store, remote.send)
    async with trio.open_nursery() as n:
        await n.start(second.run)
        await _wait_until(lambda: store.destinations() == [])
        n.cancel_scope.cancel()
    assert store.parked() == {} and len(remote.calls) == 3
    store.close()


# --- the outbound queue at rest (spec/queuing_service.md#qs-state) --------------------------

PAYLOAD = b"fan-out payload that must not be readable at rest " * 4


@spec("threat_model/stride/security_requirements.md#metadata-minimalism", "MUST")
def test_the_outbound_queue_is_encrypted_at_rest(tmp_path):
    """QS-to-QS queues keep queue encryption key material: the database file
    holds no payload in the clear, neither queued nor dead-lettered."""
    db = tmp_path / "qs.sqlite3"
    store = SqliteOutboundStore(str(db), keys=KEYS)
    seq = store.append("b.example", b"\x01" * 16, PAYLOAD, 1)
    store.append("b.example", b"\x02" * 16, PAYLOAD + b"2", 2)
    store.dead_letter("b.example", seq, Rejected(400, "bad"), 3)
    assert store.head("b.example").payload == PAYLOAD + b"2"
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())   # the file and its WAL
    assert b"fan-out payload" not in raw
    conn = sqlite3.connect(db)
    (sealed,) = conn.execute("SELECT payload FROM outbound_queue").fetchone()
    conn.close()
    assert len(sealed) == len(PAYLOAD) + 1 + 12 + 16   # nonce and tag


def test_a_wrong_or_missing_key_fails_clearly(tmp_path):
    db = str(tmp_path / "qs.sqlite3")
    store = SqliteOutboundStore(db, keys=KEYS)
    store.append("b.example", b"\x01" * 16, PAYLOAD, 1)
    store.close()
    wrong = SqliteOutboundStore(db, keys=OutboundKeys([b"\x02" * 32]))
    with pytest.raises(OutboundKeyError, match="does not hold"):
        wrong.head("b.example")
    wrong.close()
    # a row moved to another destination does not open either
    conn = sqlite3.connect(db)
    conn.execute("UPDATE outbound_queue SET destination = 'c.example'")
    conn.commit()
    conn.close()
    moved = SqliteOutboundStore(db, keys=KEYS)
    with pytest.raises(OutboundKeyError, match="does not authenticate"):
        moved.head("c.example")
    moved.close()
    keyless = SqliteOutboundStore(db, keys=None)
    assert keyless.pending_counts() == {"c.example": 1}
    with pytest.raises(OutboundKeyError, match="without the outbound queue keys"):
        keyless.append("b.example", b"\x03" * 16, b"p", 1)
    keyless.close()


@pytest.mark.trio
async def test_a_key_that_does_not_open_parks_the_destination(tmp_path, autojump_clock):
    db = str(tmp_path / "qs.sqlite3")
    SqliteOutboundStore(db, keys=KEYS).append("b.example", b"\x01" * 16, PAYLOAD, 1)
    store = SqliteOutboundStore(db, keys=OutboundKeys([b"\x02" * 32]))
    remote = FakeRemote({})
    sender = OutboundSender(store, remote.send)
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        await _wait_until(lambda: sender.is_parked("b.example"))
        n.cancel_scope.cancel()
    assert remote.calls == [] and "OutboundKeyError" in store.parked()["b.example"].reason
    store.close()


def test_rotated_keys_open_older_rows(tmp_path):
    db = str(tmp_path / "qs.sqlite3")
    store = SqliteOutboundStore(db, keys=KEYS)
    store.append("b.example", b"\x01" * 16, b"old key", 1)
    store.close()
    rotated = SqliteOutboundStore(db, keys=OutboundKeys([b"\x02" * 32, b"\x01" * 32]))
    rotated.append("b.example", b"\x02" * 16, b"new key", 2)
    first = rotated.head("b.example")
    assert first.payload == b"old key" and rotated.remove("b.example", first.seq).payload == b"new key"
    rotated.close()


# --- the operator's view ----------------------------------------------------------------------

def test_operator_report_and_unpark_through_the_cli(tmp_path, capsys):
    cfg = generate_config(tmp_path / "hs", "a.example", now_ms=1_767_225_600_000)
    store = SqliteOutboundStore(str(cfg.data_dir / "qs.sqlite3"), keys=KEYS)
    for k in range(3):
        store.append("b.example", bytes([k]) * 16, b"p", 1)
    seq = store.append("c.example", b"\x09" * 16, b"q", 1)
    store.dead_letter("c.example", seq, Rejected(400, "bad_message: no such field", "bad_message"),
                      1_767_225_600_000)
    store.park("b.example", "KeyError: 'x'", 1_767_225_600_000)
    store.close()
    assert cli.main(["admin", "--config", str(tmp_path / "hs" / "config.toml"), "outbound"]) == 0
    out = capsys.readouterr().out
    assert "b.example: 3 pending, PARKED since 2026-01-01 00:00:00 UTC: KeyError: 'x', 0 dead letters" in out
    assert "c.example: 0 pending, sending, 1 dead letters" in out
    assert "dead letter " + "09" * 16 + " refused 2026-01-01 00:00:00 UTC: 400 bad_message: " \
           "bad_message: no such field" in out
    assert cli.main(["admin", "--config", str(tmp_path / "hs" / "config.toml"), "outbound", "--unpark",
                     "b.example"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("unparked b.example\n") and "b.example: 3 pending, sending" in out
    assert cli.main(["admin", "--config", str(tmp_path / "hs" / "config.toml"), "outbound", "--drop-dead-letters",
                     "c.example"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("deleted 1 dead letters of c.example\n") and "c.example" not in out.split("\n", 1)[1]
    assert cli.main(["admin", "--config", str(tmp_path / "nowhere.toml"), "outbound"]) == 2


def test_operator_report_of_an_idle_homeserver(tmp_path):
    store = SqliteOutboundStore(str(tmp_path / "qs.sqlite3"), keys=KEYS)
    store.close()
    assert outbound_admin.run(tmp_path) == "no outbound messages pending, no parked destination, no dead letters"
    with pytest.raises(FileNotFoundError):
        outbound_admin.run(tmp_path / "missing")
