"""QS record stores (phoenix_ref.queuing.records): memory and SQLite behave alike."""

from __future__ import annotations

import os
import sqlite3

import pytest

from phoenix_ref.codec import encode
from phoenix_ref.errors import Conflict
from phoenix_ref.ids import GroupId, QsCid, QsUid
from phoenix_ref.queuing.records import (
    LOCAL_SOURCE, ClientRecord, EnqueueKeys, MemoryQsRecords, SqliteQsRecords, UserRecord, blocklist_hash,
)


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    s = MemoryQsRecords() if request.param == "memory" else SqliteQsRecords(tmp_path / "qs.sqlite3")
    yield s
    s.close()


def new_user(store, token=None):
    uid = QsUid.random()
    cid = QsCid.random(uid)
    store.create_user(UserRecord(uid, b"u" * 32, token or os.urandom(32)),
                      ClientRecord(cid, b"c" * 32, b"q" * 32, None, os.urandom(32)))
    return uid, cid


def test_user_roundtrip_and_delete(store):
    uid, cid = new_user(store)
    user, clients = store.get_user(uid)
    assert user.user_record_auth_key == b"u" * 32 and [c.qs_cid for c in clients] == [cid]
    assert store.delete_user(uid) == [cid]
    assert store.get_user(uid) is None and store.get_client(cid) is None
    assert store.delete_user(uid) == []


def test_friendship_token_unique_on_create_and_update(store):
    new_user(store, b"t" * 32)
    with pytest.raises(Conflict):
        new_user(store, b"t" * 32)
    uid, _ = new_user(store)
    with pytest.raises(Conflict):
        store.update_user(uid, b"x" * 32, b"t" * 32)
    assert store.update_user(uid, b"x" * 32, b"n" * 32)
    assert not store.update_user(QsUid.random(), b"x" * 32, b"m" * 32)


def test_key_packages_ordinary_first_last_resort_kept(store):
    uid, cid = new_user(store, b"f" * 32)
    assert store.take_add_packages(b"f" * 32, 0) == []
    store.replace_add_packages(cid, [(b"lr", True, 2**40), (b"k1", False, 2**40), (b"k2", False, 2**40)])
    assert [store.take_add_packages(b"f" * 32, 0) for _ in range(4)] == [[b"k1"], [b"k2"], [b"lr"], [b"lr"]]
    assert store.take_add_packages(b"nobody", 0) is None


def test_key_packages_past_their_lifetime_are_not_handed_out_and_then_deleted(store):
    """A KeyPackage is usable up to and including its ``not_after`` second
    (RFC 9420 §7.2); after that it is skipped, last resort or not, and
    :meth:`expire_add_packages` deletes it (state_expiration.md)."""
    _, cid = new_user(store, b"f" * 32)
    _, other = new_user(store, b"g" * 32)
    store.replace_add_packages(cid, [(b"old", False, 100), (b"lr-old", True, 100), (b"new", False, 200)])
    store.replace_add_packages(other, [(b"lr", True, 100)])
    assert store.take_add_packages(b"g" * 32, 100) == [b"lr"]            # its last second: still good
    assert store.take_add_packages(b"g" * 32, 101) == []                 # then never again
    assert store.take_add_packages(b"f" * 32, 101) == [b"new"]           # the expired ones are skipped
    assert store.take_add_packages(b"f" * 32, 101) == []                 # an expired last resort is no fallback
    assert store.expire_add_packages(100) == 0
    assert store.expire_add_packages(101) == 3                           # old, lr-old and the other's lr
    assert store.take_add_packages(b"f" * 32, 0) == [] and store.take_add_packages(b"g" * 32, 0) == []


def test_blocklist_and_client_for_enqueue(store):
    uid, cid = new_user(store)
    g1, g2 = GroupId.random("ds.a.example"), GroupId.random("ds.a.example")
    assert store.client_for_enqueue(cid, g1)[1] is False
    store.block(cid, g1)
    store.block(cid, g1)  # idempotent
    assert store.client_for_enqueue(cid, g1)[1] is True
    assert store.client_for_enqueue(cid, g2)[1] is False
    assert store.client_for_enqueue(QsCid.random(uid), g1) is None


def test_blocklist_hash_is_salted():
    g = GroupId.random("ds.a.example")
    assert blocklist_hash(b"a" * 32, g) != blocklist_hash(b"b" * 32, g)


def test_delete_last_client_deletes_user(store):
    uid, cid = new_user(store)
    second = ClientRecord(QsCid.random(uid), b"c" * 32, b"q" * 32, None, os.urandom(32))
    assert store.add_client(second, 2)
    with pytest.raises(Conflict):
        store.add_client(ClientRecord(QsCid.random(uid), b"c" * 32, b"q" * 32, None, b"s" * 32), 2)
    assert store.delete_client(cid) == (True, False)
    assert store.delete_client(second.qs_cid) == (True, True)
    assert store.get_user(uid) is None
    assert store.delete_client(cid) == (False, False)
    assert not store.add_client(ClientRecord(QsCid.random(uid), b"c" * 32, b"q" * 32, None, b"s" * 32), 2)


def test_taken_message_ids_keep_their_answer_until_they_expire(store):
    assert store.message_answer("a.example", b"1" * 16, 1000) is None
    store.remember_message_id("a.example", b"1" * 16, b"first answer", 1500)
    assert store.message_answer("a.example", b"1" * 16, 1499) == b"first answer"
    assert store.message_answer("b.example", b"1" * 16, 1499) is None      # per source
    assert store.message_answer(LOCAL_SOURCE, b"1" * 16, 1499) is None     # the local DS's ids apart
    store.remember_message_id(LOCAL_SOURCE, b"1" * 16, b"local", 9000)
    assert store.message_answer(LOCAL_SOURCE, b"1" * 16, 1499) == b"local"
    assert store.message_answer("a.example", b"1" * 16, 1500) is None      # expired: purged
    store.remember_message_id("a.example", b"1" * 16, b"again", 3000)    # and may be taken again
    assert store.message_answer("a.example", b"1" * 16, 2000) == b"again"


def test_a_taken_message_id_cannot_be_taken_twice(store):
    store.remember_message_id("a.example", b"1" * 16, b"", 1500)
    with pytest.raises((ValueError, sqlite3.IntegrityError)):
        store.remember_message_id("a.example", b"1" * 16, b"other", 1500)
    assert store.message_answer("a.example", b"1" * 16, 1000) == b""


def test_sqlite_records_survive_reopen(tmp_path):
    path = tmp_path / "qs.sqlite3"
    s = SqliteQsRecords(path)
    uid, cid = new_user(s, b"f" * 32)
    s.remember_message_id("a.example", b"m" * 16, b"answer", 10_000)
    s.close()
    s2 = SqliteQsRecords(path)
    assert s2.get_client(cid) is not None
    assert s2.message_answer("a.example", b"m" * 16, 5) == b"answer"
    s2.close()


def test_clients_for_enqueue_one_read_per_fan_out(store):
    uid, cid = new_user(store)
    other = ClientRecord(QsCid.random(uid), b"d" * 32, b"r" * 32, None, os.urandom(32))
    store.add_client(other, 10)
    g1, g2 = GroupId.random("ds.a.example"), GroupId.random("ds.a.example")
    store.block(cid, GroupId.random("ds.a.example"))   # several blocklist entries, one matching
    store.block(cid, g1)
    store.block(cid, GroupId.random("ds.a.example"))
    unknown = encode(QsCid.random(uid))
    found = store.clients_for_enqueue([encode(cid), unknown, encode(other.qs_cid), encode(cid)], g1)
    assert found == {encode(cid): EnqueueKeys(b"c" * 32, b"q" * 32, True),
                     encode(other.qs_cid): EnqueueKeys(b"d" * 32, b"r" * 32, False)}
    assert not store.clients_for_enqueue([encode(cid)], g2)[encode(cid)].blocked


def test_clients_for_enqueue_sees_every_change_after_a_first_read(store):
    """The SQLite store caches what fan-outs read; every write that changes
    it (key update, block, client and user deletion) must show at once."""
    uid, cid = new_user(store)
    other_uid, other = new_user(store)
    g = GroupId.random("ds.a.example")
    key = encode(cid)
    assert store.clients_for_enqueue([key], g) == {key: EnqueueKeys(b"c" * 32, b"q" * 32, False)}
    assert store.update_client(cid, b"C" * 32, b"Q" * 32, None)
    assert store.clients_for_enqueue([key], g) == {key: EnqueueKeys(b"C" * 32, b"Q" * 32, False)}
    assert store.block(cid, g)
    assert store.clients_for_enqueue([key], g)[key].blocked
    assert store.delete_client(cid) == (True, True)
    assert store.clients_for_enqueue([key], g) == {}
    assert store.clients_for_enqueue([encode(other)], g)
    assert store.delete_user(other_uid) == [other]
    assert store.clients_for_enqueue([encode(other)], g) == {}


def test_sqlite_enqueue_cache_is_dropped_when_a_write_rolls_back(tmp_path):
    s = SqliteQsRecords(tmp_path / "qs.sqlite3")
    _, cid = new_user(s)
    g = GroupId.random("ds.a.example")
    key = encode(cid)
    assert s.clients_for_enqueue([key], g)[key].queue_encryption_key == b"q" * 32
    with pytest.raises(RuntimeError):
        with s.transaction():
            assert s.update_client(cid, b"C" * 32, b"Q" * 32, None)
            assert s.clients_for_enqueue([key], g)[key].queue_encryption_key == b"Q" * 32   # read inside
            raise RuntimeError("a later write of the same unit failed")
    assert s.clients_for_enqueue([key], g)[key].queue_encryption_key == b"q" * 32
    s.close()
