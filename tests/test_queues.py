"""Tests for the shared queue semantics (phoenix_ref/queues.py)."""

from __future__ import annotations

import dataclasses
import datetime
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from phoenix_ref import queue_crypto as qc
from phoenix_ref.codec import decode, encode
from phoenix_ref.crypto import HpkeKeyPair
from phoenix_ref.errors import Conflict, Malformed, NotFound
from phoenix_ref.queues import (
    TimePrecision, DequeueMessagesResponse, MemoryQueueStore, QueueConfig, QueueInfo, Queues,
    SqliteQueueStore, month_start_ms,
)
from phoenix_ref.spec_plugin import spec
from phoenix_ref.storage import open_connection, transaction

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
QS_DEQUEUE = "spec/queuing_service.md#dequeue-messages"
AS_DEQUEUE = "spec/authentication_service.md#dequeue-messages"
OWNER = HpkeKeyPair.derive(b"\x05" * 32)
NO_ROTATION = QueueConfig(rotation_interval_ms=None)


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    s = MemoryQueueStore() if request.param == "memory" else SqliteQueueStore(tmp_path / "q.db")
    try:
        yield s
    finally:
        s.close()


class Owner:
    """The queue owner's view: decrypts messages in order, remembers plaintexts."""

    def __init__(self, state: qc.QueueRatchetState, private=OWNER.private):
        self.state, self.private, self.seen = state, private, {}

    def take(self, msgs):
        for m in msgs:
            if m.sequence_number < self.state.generation:
                continue
            pt, self.state = qc.decrypt_queue_message(self.private, self.state, m)
            self.seen[m.sequence_number] = pt
        return [self.seen[m.sequence_number] for m in msgs]


def test_month_start():
    t = int(datetime.datetime(2026, 3, 17, 13, 5, tzinfo=datetime.timezone.utc).timestamp() * 1000) + 123
    assert month_start_ms(t) == int(datetime.datetime(2026, 3, 1, tzinfo=datetime.timezone.utc).timestamp()) * 1000
    assert month_start_ms(T0) == T0
    assert month_start_ms(T0 - 1) == int(datetime.datetime(2025, 12, 1, tzinfo=datetime.timezone.utc).timestamp()) * 1000


@spec("spec/queuing_service.md#qs-state", "informative")
def test_enqueue_assigns_current_sequence_number_then_increments(store):
    q = Queues(store, NO_ROTATION)
    q.create(b"c1", OWNER.public, T0)  # QS style: message 0 is the sealed initial key
    assert q.info(b"c1").next_sequence_number == 1
    assert [q.enqueue(b"c1", b"m%d" % i, T0) for i in range(3)] == [1, 2, 3]
    assert q.info(b"c1").next_sequence_number == 4
    res = q.dequeue(b"c1", 0, 10, T0)
    assert [m.sequence_number for m in res.messages] == [0, 1, 2, 3]
    assert Owner(qc.QueueRatchetState(None, 0)).take(res.messages) == [None, b"m0", b"m1", b"m2"]


@spec("spec/authentication_service.md#as-state", "informative")
def test_as_direct_queue_with_owner_ratchet_key_and_month_activity(store):
    cfg = QueueConfig(rotation_interval_ms=None, activity_precision=TimePrecision.MONTH)
    q = Queues(store, cfg)
    key = b"\x09" * 32
    q.create(b"alias", OWNER.public, T0 + 5 * 86_400_000, initial_ratchet_key=key)
    assert q.info(b"alias").next_sequence_number == 0
    assert q.info(b"alias").activity_ms == T0  # only year and month are kept
    assert q.enqueue(b"alias", b"hi", T0) == 0
    later = T0 + 40 * 86_400_000  # 2026-02-10
    res = q.dequeue(b"alias", 0, 10, later)
    assert Owner(qc.QueueRatchetState(key, 0)).take(res.messages) == [b"hi"]
    assert q.info(b"alias").activity_ms == month_start_ms(later) != later


@spec(QS_DEQUEUE, "informative")
@spec(AS_DEQUEUE, "informative")
def test_dequeue_deletes_older_and_returns_min_of_limits(store):
    q = Queues(store, QueueConfig(max_messages=3, rotation_interval_ms=None))
    q.create(b"c", OWNER.public, T0, initial_ratchet_key=bytes(32))
    for i in range(8):
        q.enqueue(b"c", bytes([i]), T0)
    res = q.dequeue(b"c", 2, 10, T0)  # configured maximum (3) wins
    assert [m.sequence_number for m in res.messages] == [2, 3, 4] and res.remaining == 3
    assert q.info(b"c").message_count == 6  # 0 and 1 deleted, returned ones kept
    res = q.dequeue(b"c", 2, 2, T0)  # requested number wins; same messages again
    assert [m.sequence_number for m in res.messages] == [2, 3] and res.remaining == 4
    res = q.dequeue(b"c", 6, 10, T0)  # remaining number wins
    assert [m.sequence_number for m in res.messages] == [6, 7] and res.remaining == 0
    assert q.info(b"c").message_count == 2
    res = q.dequeue(b"c", 8, 10, T0)
    assert res.messages == [] and res.remaining == 0 and q.info(b"c").message_count == 0
    assert q.enqueue(b"c", b"next", T0) == 8  # sequence numbers never restart


@spec(QS_DEQUEUE, "informative")
def test_dequeue_zero_and_huge_values(store):
    q = Queues(store, NO_ROTATION)
    q.create(b"c", OWNER.public, T0, initial_ratchet_key=bytes(32))
    for i in range(3):
        q.enqueue(b"c", b"x", T0)
    res = q.dequeue(b"c", 1, 0, T0)
    assert res.messages == [] and res.remaining == 2
    res = q.dequeue(b"c", 0, 2**64 - 1, T0)
    assert len(res.messages) == 2
    res = q.dequeue(b"c", 2**64 - 1, 2**64 - 1, T0)  # past everything: all deleted
    assert res.messages == [] and res.remaining == 0 and q.info(b"c").message_count == 0


def test_rotation_interval_inserts_update_before_message(store):
    q = Queues(store, QueueConfig(rotation_interval_ms=1000))
    q.create(b"c", OWNER.public, T0)
    assert q.enqueue(b"c", b"a", T0 + 10) == 1
    assert q.enqueue(b"c", b"b", T0 + 1000) == 3  # update took 2
    assert q.enqueue(b"c", b"c", T0 + 1500) == 4
    msgs = q.dequeue(b"c", 0, 10, T0 + 1500).messages
    assert isinstance(msgs[2].payload, qc.RatchetKeyUpdate)
    assert Owner(qc.QueueRatchetState(None, 0)).take(msgs) == [None, b"a", None, b"b", b"c"]


def test_key_changes_through_the_core(store):
    q = Queues(store, NO_ROTATION)
    q.create(b"c", OWNER.public, T0)
    q.enqueue(b"c", b"a", T0)
    new_owner = HpkeKeyPair.generate()
    assert q.set_queue_encryption_key(b"c", new_owner.public, T0) == 2
    assert q.set_ratchet_key(b"c", b"\x01" * 32, T0) == 3
    assert q.rotate(b"c", T0) == 4
    q.enqueue(b"c", b"b", T0)
    msgs = q.dequeue(b"c", 0, 10, T0).messages
    owner = Owner(qc.QueueRatchetState(None, 0), private=[new_owner.private, OWNER.private])
    assert owner.take(msgs) == [None, b"a", None, None, None, b"b"]
    with pytest.raises(Malformed):
        q.set_ratchet_key(b"c", b"short", T0)
    assert q.info(b"c").next_sequence_number == 6  # the refused change took nothing


def test_unknown_and_duplicate_queues(store):
    q = Queues(store, NO_ROTATION)
    for op in (lambda: q.enqueue(b"nope", b"x", T0), lambda: q.dequeue(b"nope", 0, 1, T0),
               lambda: q.delete(b"nope"), lambda: q.info(b"nope"), lambda: q.rotate(b"nope", T0)):
        with pytest.raises(NotFound) as e:
            op()
        assert e.value.code == "queue_not_found"
    q.create(b"a", OWNER.public, T0)
    with pytest.raises(Conflict):
        q.create(b"a", OWNER.public, T0)
    with pytest.raises(Malformed):
        q.create(b"b", b"bad key", T0)
    with pytest.raises(NotFound):
        q.info(b"b")


def test_delete_removes_messages_and_id_can_be_reused(store):
    q = Queues(store, NO_ROTATION)
    q.create(b"a", OWNER.public, T0)
    q.create(b"b", OWNER.public, T0)
    q.enqueue(b"a", b"x", T0)
    q.delete(b"a")
    with pytest.raises(NotFound):
        q.dequeue(b"a", 0, 1, T0)
    assert q.info(b"b").message_count == 1  # other queue untouched
    q.create(b"a", OWNER.public, T0)
    assert q.info(b"a").message_count == 1 and q.info(b"a").next_sequence_number == 1


def test_inactive_queues(store):
    q = Queues(store, NO_ROTATION)
    q.create(b"old", OWNER.public, T0)
    q.create(b"new", OWNER.public, T0)
    q.dequeue(b"new", 0, 1, T0 + 100)
    assert q.inactive(T0 + 50) == [b"old"]
    assert q.inactive(T0) == []
    assert q.inactive(T0 + 101) == [b"new", b"old"]


def test_failed_build_leaves_queue_unchanged(store):
    _, material = qc.new_queue(HpkeKeyPair.generate().public, T0)
    store.create_queue(b"q", material, [b"p0"], T0)
    store.create_queue(b"r", material, [b"p0"], T0)

    def boom(material):
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        store.append(b"q", boom)
    calls = []

    def boom_second(m):   # the fan-out fails at its second queue: the first is unchanged too
        calls.append(m)
        if len(calls) == 2:
            raise RuntimeError("no")
        return [b"p1"], dataclasses.replace(m, generation=m.generation + 1)

    with pytest.raises(RuntimeError):
        store.append_many([b"q", b"r"], boom_second)
    for q in (b"q", b"r"):
        info = store.info(q)
        assert (info.next_sequence_number, info.key_material, info.message_count) == (1, material, 1)


def test_append_many_appends_twice_to_a_queue_named_twice(store):
    _, material = qc.new_queue(HpkeKeyPair.generate().public, T0)
    store.create_queue(b"q", material, [b"p0"], T0)

    def one(m):
        return [b"m%d" % m.generation], dataclasses.replace(m, generation=m.generation + 1)

    assert store.append_many([b"q", b"missing", b"q"], one) == [1, None, 2]
    assert store.fetch(b"q", 0, 10, T0) == ([(0, b"p0"), (1, b"m1"), (2, b"m2")], 0)
    assert store.info(b"q").key_material.generation == 3


def test_build_must_advance_the_generation_with_the_payloads(store):
    _, material = qc.new_queue(HpkeKeyPair.generate().public, T0)
    store.create_queue(b"q", material, [b"p0"], T0)
    with pytest.raises(ValueError):
        store.append(b"q", lambda m: ([b"p1", b"p2"], dataclasses.replace(m, generation=m.generation + 1)))
    assert store.info(b"q").message_count == 1


def test_sqlite_key_material_cache_is_dropped_when_the_owner_rolls_back(tmp_path):
    """The store caches key material it wrote; a unit rolled back after the
    write (here: by the owner of a shared connection) must not leave the
    cache ahead of the database, or the next message would skip ratchet steps."""
    conn, lock = open_connection(tmp_path / "shared.db"), threading.RLock()
    queues = Queues(SqliteQueueStore(conn, "qs", lock), NO_ROTATION)
    queues.create(b"q", OWNER.public, T0, initial_ratchet_key=bytes(32))
    assert queues.enqueue(b"q", b"one", T0) == 0
    with pytest.raises(RuntimeError):
        with transaction(conn, lock):
            assert queues.enqueue_many([b"q"], b"lost", T0) == [1]
            raise RuntimeError("the owner's later write failed")
    assert queues.info(b"q").next_sequence_number == 1
    assert queues.enqueue(b"q", b"two", T0) == 1
    msgs = queues.dequeue(b"q", 0, 10, T0).messages
    assert Owner(qc.QueueRatchetState(bytes(32), 0)).take(msgs) == [b"one", b"two"]
    conn.close()


def test_sqlite_cached_key_material_matches_the_file(tmp_path):
    """Every kind of key-material change reaches the database, not only the
    cache: a second store on the same file sees the same material."""
    path = tmp_path / "q.db"
    q = Queues(SqliteQueueStore(path), QueueConfig(rotation_interval_ms=1000))
    q.create(b"c", OWNER.public, T0)
    q.enqueue_many([b"c"], b"a", T0)                                  # ratchet step
    q.enqueue_many([b"c"], b"b", T0 + 5000)                           # rotation due: update + step
    q.set_queue_encryption_key(b"c", HpkeKeyPair.generate().public, T0 + 6000)
    q.set_ratchet_key(b"c", b"\x02" * 32, T0 + 7000)
    q.enqueue(b"c", b"c", T0 + 7000)
    fresh = SqliteQueueStore(path)
    try:
        assert fresh.info(b"c") == q.info(b"c")
        assert fresh.info(b"c").key_material == q.store._cache.get(b"c")[1]
    finally:
        fresh.close()
        q.store.close()


def test_sqlite_key_material_cache_is_bounded(tmp_path):
    store = SqliteQueueStore(tmp_path / "q.db", max_cached=3)
    queues = Queues(store, NO_ROTATION)
    for i in range(10):
        queues.create(bytes([i]), OWNER.public, T0, initial_ratchet_key=bytes(32))
    assert queues.enqueue_many([bytes([i]) for i in range(10)], b"x", T0) == [0] * 10
    assert len(store._cache) == 3
    assert queues.enqueue_many([bytes([i]) for i in range(10)], b"y", T0) == [1] * 10
    store.close()


def test_sqlite_survives_reopen_and_separates_table_prefixes(tmp_path):
    path = tmp_path / "as.db"
    a = Queues(SqliteQueueStore(path, "direct_queue"), NO_ROTATION)
    b = Queues(SqliteQueueStore(path, "alias_queue"), NO_ROTATION)
    a.create(b"x", OWNER.public, T0, initial_ratchet_key=bytes(32))
    a.enqueue(b"x", b"kept", T0)
    with pytest.raises(NotFound):
        b.info(b"x")
    a.store.close()
    b.store.close()
    a2 = Queues(SqliteQueueStore(path, "direct_queue"), NO_ROTATION)
    try:
        assert a2.enqueue(b"x", b"second", T0) == 1
        msgs = a2.dequeue(b"x", 0, 10, T0).messages
        assert Owner(qc.QueueRatchetState(bytes(32), 0)).take(msgs) == [b"kept", b"second"]
    finally:
        a2.store.close()
    with pytest.raises(ValueError):
        SqliteQueueStore(path, "bad; DROP")


def test_response_struct_round_trip(store):
    q = Queues(store, NO_ROTATION)
    q.create(b"c", OWNER.public, T0)
    q.enqueue(b"c", b"x", T0)
    res = q.dequeue(b"c", 0, 10, T0)
    wire = DequeueMessagesResponse(res.messages, res.remaining)
    assert decode(DequeueMessagesResponse, encode(wire)) == wire


# --- model-based test ----------------------------------------------------------------

QIDS = [b"q1", b"q2"]


class QueueMachine(RuleBasedStateMachine):
    """Queues (with encryption, over a real store) against a plain list model.

    The model per queue: the next sequence number, the list of stored
    (sequence number, plaintext or None for key messages), the activity time.
    The owner decrypts every message in order; before a dequeue that would
    skip messages it has not read yet, it first fetches from where it stands
    (that deletes only what the real call deletes anyway).
    """

    store_kind = "memory"
    precision = TimePrecision.MILLISECOND

    def __init__(self):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.cfg = QueueConfig(max_messages=4, rotation_interval_ms=3000, activity_precision=self.precision)
        self.queues = Queues(self._open(), self.cfg)
        self.now = T0
        self.model: dict[bytes, dict] = {}

    def _open(self):
        return MemoryQueueStore() if self.store_kind == "memory" else SqliteQueueStore(self.dir / "q.db")

    def teardown(self):
        self.queues.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _act(self):
        return self.cfg.activity(self.now)

    @rule(qid=st.sampled_from(QIDS), qs_style=st.booleans())
    def create(self, qid, qs_style):
        if qid in self.model:
            with pytest.raises(Conflict):
                self.queues.create(qid, OWNER.public, self.now)
            return
        if qs_style:
            self.queues.create(qid, OWNER.public, self.now)
            m = dict(next=1, msgs=[(0, None)], owner=Owner(qc.QueueRatchetState(None, 0)))
        else:
            key = bytes([len(self.model)]) * 32
            self.queues.create(qid, OWNER.public, self.now, initial_ratchet_key=key)
            m = dict(next=0, msgs=[], owner=Owner(qc.QueueRatchetState(key, 0)))
        m.update(activity=self._act(), rotated=self.now)
        self.model[qid] = m

    @rule(qid=st.sampled_from(QIDS), data=st.binary(max_size=20))
    def enqueue(self, qid, data):
        if qid not in self.model:
            with pytest.raises(NotFound):
                self.queues.enqueue(qid, data, self.now)
            return
        m = self.model[qid]
        if self.now - m["rotated"] >= self.cfg.rotation_interval_ms:
            m["msgs"].append((m["next"], None))
            m["next"] += 1
            m["rotated"] = self.now
        assert self.queues.enqueue(qid, data, self.now) == m["next"]
        m["msgs"].append((m["next"], data))
        m["next"] += 1

    @rule(qid=st.sampled_from(QIDS))
    def rotate(self, qid):
        if qid in self.model:
            m = self.model[qid]
            assert self.queues.rotate(qid, self.now) == m["next"]
            m["msgs"].append((m["next"], None))
            m["next"] += 1
            m["rotated"] = self.now

    def _fetch(self, qid, start, max_n):
        m = self.model[qid]
        m["msgs"] = [x for x in m["msgs"] if x[0] >= start]
        want = m["msgs"][:min(max_n, self.cfg.max_messages)]
        res = self.queues.dequeue(qid, start, max_n, self.now)
        m["activity"] = self._act()
        assert [x.sequence_number for x in res.messages] == [s for s, _ in want]
        assert res.remaining == len(m["msgs"]) - len(want)
        assert m["owner"].take(res.messages) == [p for _, p in want]
        return res

    @rule(qid=st.sampled_from(QIDS), offset=st.integers(-2, 8), max_n=st.integers(0, 6))
    def dequeue(self, qid, offset, max_n):
        if qid not in self.model:
            with pytest.raises(NotFound):
                self.queues.dequeue(qid, 0, max_n, self.now)
            return
        m = self.model[qid]
        base = m["msgs"][0][0] if m["msgs"] else m["next"]
        start = max(0, base + offset)
        owner = m["owner"]
        while owner.state.generation < min(start, m["next"]):  # catch up first
            self._fetch(qid, owner.state.generation, self.cfg.max_messages)
        self._fetch(qid, start, max_n)

    @rule(qid=st.sampled_from(QIDS))
    def dequeue_everything_past_the_end(self, qid):
        if qid in self.model:
            m = self.model[qid]
            while m["owner"].state.generation < m["next"]:
                self._fetch(qid, m["owner"].state.generation, self.cfg.max_messages)
            self._fetch(qid, 2**64 - 1, 2**64 - 1)

    @rule(qid=st.sampled_from(QIDS))
    def delete(self, qid):
        if qid in self.model:
            self.queues.delete(qid)
            del self.model[qid]
        else:
            with pytest.raises(NotFound):
                self.queues.delete(qid)

    @rule(ms=st.sampled_from([1, 999, 2000, 40 * 86_400_000]))
    def advance_time(self, ms):
        self.now += ms

    @invariant()
    def matches_model(self):
        for qid in QIDS:
            if qid not in self.model:
                with pytest.raises(NotFound):
                    self.queues.info(qid)
                continue
            m, info = self.model[qid], self.queues.info(qid)
            assert info.next_sequence_number == m["next"]
            assert info.message_count == len(m["msgs"])
            assert info.activity_ms == m["activity"]


class SqliteMonthQueueMachine(QueueMachine):
    store_kind = "sqlite"
    precision = TimePrecision.MONTH

    @rule()
    def restart(self):
        """Close the database and open the file again: nothing is lost."""
        self.queues.store.close()
        self.queues = Queues(self._open(), self.cfg)


_settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestQueueModelMemory = QueueMachine.TestCase
TestQueueModelMemory.settings = _settings
TestQueueModelSqlite = SqliteMonthQueueMachine.TestCase
TestQueueModelSqlite.settings = _settings


def test_sqlite_fan_out_larger_than_one_statement(tmp_path):
    """A fan-out to more queues than one statement's parameters (reads, key
    material updates and message inserts are each split into chunks)."""
    store = SqliteQueueStore(tmp_path / "q.db", max_cached=0)     # every read goes to the database
    queues = Queues(store, NO_ROTATION)
    ids = [i.to_bytes(2, "big") for i in range(700)]
    for q in ids:
        queues.create(q, OWNER.public, T0, initial_ratchet_key=bytes(32))
    assert queues.enqueue_many(ids, b"one", T0) == [0] * 700
    assert queues.enqueue_many(ids + [b"gone"], b"two", T0) == [1] * 700 + [None]
    for q in (ids[0], ids[499], ids[699]):
        msgs = queues.dequeue(q, 0, 10, T0).messages
        assert Owner(qc.QueueRatchetState(bytes(32), 0)).take(msgs) == [b"one", b"two"]
    store.close()
