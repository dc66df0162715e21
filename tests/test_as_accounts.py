"""Unit tests of the AS store (phoenix_ref/authentication/accounts.py)."""

from __future__ import annotations

import pytest

from phoenix_ref.authentication.accounts import (
    AliasEntry, ClientEntry, SqliteAccountStore, UserEntry, direct_queue_id, open_as_storage,
)
from phoenix_ref.authentication.store import AsStore
from phoenix_ref.errors import Conflict, NotFound
from phoenix_ref.ids import Alias, ClientId, UserId
from phoenix_ref.queues import month_start_ms
from phoenix_ref.spec_plugin import spec

NOW = 1_767_225_600_000 + 17 * 24 * 3600 * 1000  # mid-January 2026


def _user(domain="a.example"):
    uid = UserId.random(domain)
    return uid, ClientId.random(uid)


def test_user_entries_survive_reopen(tmp_path):
    path = tmp_path / "as.db"
    store = SqliteAccountStore(path)
    uid, cid = _user()
    store.create_user(UserEntry(uid, b"record", b""), ClientEntry(cid, b"cred"), [(b"pkg1", NOW + 10)])
    store.set_user_profile(uid, b"profile")
    with pytest.raises(Conflict):
        store.create_user(UserEntry(uid, b"r", b""), ClientEntry(ClientId.random(uid), b"c"), [])
    setup = store.opaque_server_setup()
    store.close()
    store = SqliteAccountStore(path)
    try:
        assert store.get_user(uid) == UserEntry(uid, b"record", b"profile")
        assert store.get_client(cid) == ClientEntry(cid, b"cred")
        assert store.opaque_server_setup() == setup  # OPAQUE records stay usable
        assert store.take_connection_package(uid, NOW) == b"pkg1"
        assert store.delete_user(uid) == [cid]
        assert store.get_user(uid) is None and store.get_client(cid) is None
        assert store.take_connection_package(uid, NOW) is None
        with pytest.raises(NotFound):
            store.delete_user(uid)
        with pytest.raises(NotFound):
            store.set_user_profile(uid, b"x")
    finally:
        store.close()


def test_connection_packages_oldest_first_last_one_kept_expired_dropped(tmp_path):
    store = SqliteAccountStore(tmp_path / "as.db")
    try:
        uid, cid = _user()
        store.create_user(UserEntry(uid, b"r", b""), ClientEntry(cid, b"c"), [(b"old", NOW - 1)])
        store.add_connection_packages(cid, [(b"p1", NOW + 5), (b"p2", NOW + 5)])
        assert store.take_connection_package(uid, NOW) == b"p1"   # "old" expired and dropped
        assert store.take_connection_package(uid, NOW) == b"p2"   # last resort: kept
        assert store.take_connection_package(uid, NOW) == b"p2"
        assert store.take_connection_package(uid, NOW + 6) is None
        with pytest.raises(NotFound):
            store.add_connection_packages(ClientId.random(uid), [(b"x", NOW)])
    finally:
        store.close()


def test_alias_entries(tmp_path):
    path = tmp_path / "as.db"
    store = SqliteAccountStore(path)
    alias = Alias("Zoe")
    store.create_alias(AliasEntry(alias, b"k" * 32))
    with pytest.raises(Conflict):
        store.create_alias(AliasEntry(Alias("zoe"), b"j" * 32))
    store.add_alias_packages(alias, [(b"a", NOW + 1), (b"b", NOW + 1)])
    store.close()
    store = SqliteAccountStore(path)
    try:
        assert store.get_alias(alias) == AliasEntry(alias, b"k" * 32)
        assert store.take_alias_package(alias, NOW) == b"a"
        store.delete_alias(alias)
        assert store.get_alias(alias) is None and store.take_alias_package(alias, NOW) is None
        with pytest.raises(NotFound):
            store.delete_alias(alias)
        with pytest.raises(NotFound):
            store.add_alias_packages(alias, [(b"x", NOW)])
    finally:
        store.close()


def test_direct_queues_share_the_file_and_keep_only_the_month(tmp_path):
    path = tmp_path / "as.db"
    accounts, queues = open_as_storage(path, max_messages=3)
    uid, cid = _user()
    qid = direct_queue_id(cid)
    queues.create(qid, b"\x01" * 32, NOW, initial_ratchet_key=b"\x02" * 32)
    for i in range(5):
        queues.enqueue(qid, bytes([i]), NOW)
    accounts.close()
    queues.store.close()
    accounts, queues = open_as_storage(path, max_messages=3)
    try:
        result = queues.dequeue(qid, 1, 100, NOW)
        assert [msg.sequence_number for msg in result.messages] == [1, 2, 3] and result.remaining == 1
        assert queues.info(qid).activity_ms == month_start_ms(NOW)
        assert direct_queue_id(cid) != direct_queue_id(Alias("x"))
        with pytest.raises(TypeError):
            direct_queue_id(uid)
    finally:
        accounts.close()
        queues.store.close()


def test_accounts_and_direct_queues_share_one_connection_and_commit_together(tmp_path):
    accounts, queues = open_as_storage(tmp_path / "as.db")
    uid, cid = _user()
    try:
        assert queues.store._db is accounts.connection
        with pytest.raises(RuntimeError):
            with accounts.transaction():
                accounts.create_user(UserEntry(uid, b"rec", b""), ClientEntry(cid, b"cred"), [])
                queues.create(direct_queue_id(cid), b"\x01" * 32, NOW, initial_ratchet_key=b"\x02" * 32)
                raise RuntimeError("the request fails after both writes")
        assert not accounts.user_exists(uid)
        with pytest.raises(NotFound):
            queues.info(direct_queue_id(cid))
        with accounts.transaction():
            accounts.create_user(UserEntry(uid, b"rec", b""), ClientEntry(cid, b"cred"), [])
            queues.create(direct_queue_id(cid), b"\x01" * 32, NOW, initial_ratchet_key=b"\x02" * 32)
        assert accounts.user_exists(uid) and queues.info(direct_queue_id(cid)).message_count == 0
    finally:
        accounts.close()


def test_the_as_store_opens_one_connection_for_all_its_parts(tmp_path):
    store = AsStore(tmp_path / "as.sqlite3")
    try:
        assert store.accounts.connection is store.conn and store.queues.store._db is store.conn
        assert store.accounts.lock is store.lock
    finally:
        store.close()


@spec("threat_model/stride/security_requirements.md#metadata-minimalism", "MUST")
def test_direct_queues_keep_rotation_times_to_the_day(tmp_path):
    """The AS needs the last ratchet rotation only to rotate once a day: it
    keeps its day, not its millisecond (docs/storage.md)."""
    from phoenix_ref.crypto import HpkeKeyPair
    day = 24 * 3600 * 1000
    start = NOW + 5 * 3600 * 1000 + 123          # 05:00:00.123 on a day
    accounts, queues = open_as_storage(tmp_path / "as.db")
    try:
        qid = direct_queue_id(_user()[1])
        queues.create(qid, HpkeKeyPair.generate().public, start, initial_ratchet_key=b"\x02" * 32)
        assert queues.info(qid).key_material.rotated_at_ms == NOW
        queues.enqueue(qid, b"same day", start + 3600 * 1000)
        assert queues.info(qid).message_count == 1                       # no rotation yet
        stored = accounts.connection.execute("SELECT rotated_at_ms, activity_ms FROM as_direct_queues").fetchall()
        assert stored == [(NOW, month_start_ms(NOW))]
        queues.enqueue(qid, b"next day", NOW + day + 60_000)   # a day after the stored day's start
        info = queues.info(qid)
        assert info.message_count == 3 and info.key_material.rotated_at_ms == NOW + day
    finally:
        accounts.close()
