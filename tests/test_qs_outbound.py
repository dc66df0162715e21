"""Durable per-destination outbound queues (phoenix_ref.federation.outbound)."""

from __future__ import annotations

import random

import pytest
import trio

from phoenix_ref.federation.outbound import (
    BackoffPolicy, Delivered, MemoryOutboundStore, OutboundSender, Rejected, RetryLater,
    SqliteOutboundStore,
)


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
async def test_rejected_is_dropped_and_reported(autojump_clock):
    store = MemoryOutboundStore()
    remote = FakeRemote({"b.example": [Rejected(403, "denied"), Delivered(b"ok")]})
    rejected, delivered = [], []
    sender = OutboundSender(store, remote.send,
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
    store = SqliteOutboundStore(db)
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
    store2 = SqliteOutboundStore(db)
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
    store3 = SqliteOutboundStore(db)
    assert store3.destinations() == []
    assert store3.head("b.example") is None
    store3.close()


def test_sqlite_store_joins_an_owner_transaction(tmp_path):
    import sqlite3
    import threading
    conn = sqlite3.connect(str(tmp_path / "x.db"), isolation_level=None, check_same_thread=False)
    lock = threading.RLock()
    store = SqliteOutboundStore(conn, lock)
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
    store = MemoryOutboundStore() if kind == "memory" else SqliteOutboundStore(str(tmp_path / "o.db"))
    first = store.append("b.example", b"\x01" * 16, b"one", 1)
    second = store.append("b.example", b"\x02" * 16, b"two", 2)
    store.append("c.example", b"\x03" * 16, b"other", 3)
    nxt = store.remove("b.example", first)
    assert (nxt.seq, nxt.payload) == (second, b"two")
    assert store.remove("b.example", second) is None
    assert store.head("c.example").payload == b"other"
    if kind == "sqlite":
        store.close()
