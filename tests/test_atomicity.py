"""Record/entry writes and their queues commit as one unit (issue 12).

Every test lets the FIRST write of an operation happen, makes the SECOND one
fail (the queue store's call raises, as a full disk or a bug would), and
then finds the state exactly as before: no user without its queue, no queue
without its client, no deletion half done.
"""

from __future__ import annotations

import pytest

from phoenix_ref.authentication.accounts import direct_queue_id
from phoenix_ref.client.as_client import Registration
from phoenix_ref.codec import encode
from phoenix_ref.crypto import HpkeKeyPair, SigningKey
from phoenix_ref.ids import Fqdn
from phoenix_ref.queuing.messages import (
    CreateClientRecordParams, DeleteClientRecordParams, DeleteUserRecordParams, UpdateClientRecordParams,
)
from tests.as_fixtures import NOW, build
from tests.qs_helpers import Client, make_core


class Broken(Exception):
    """What the patched second write raises."""


@pytest.fixture
def broken(monkeypatch):
    """``broken(obj, name)`` replaces ``obj.name`` by a function that records
    the call and raises :class:`Broken`; returns the list of calls. pytest
    puts the real method back after the test (or at ``monkeypatch.undo()``)."""
    calls: list[str] = []

    def patch(obj, name: str) -> list[str]:
        def fail(*args, **kwargs):
            calls.append(name)
            raise Broken(name)
        monkeypatch.setattr(obj, name, fail)
        return calls
    return patch


def count(conn, table: str) -> int:
    return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


# --- AS: registration and account deletion ---------------------------------------------

@pytest.fixture
def asu(tmp_path):
    a = build(Fqdn("a.example"), tmp_path / "as.db")
    yield a
    a.close()


def _as_rows(asu) -> dict[str, int]:
    conn = asu.core.accounts.connection
    return {t: count(conn, t) for t in ("users", "clients", "connection_packages", "as_direct_queues",
                                        "as_direct_ratchets")}


def test_as_registration_whose_queue_fails_leaves_no_entry(asu, broken, monkeypatch):
    reg, init = Registration.start(asu.domain, b"pw", asu.secrets.intermediate.fingerprint(), NOW)
    finish = reg.finish(asu.core.init_user_registration(init, NOW), NOW)
    before = _as_rows(asu)
    calls = broken(asu.core.queues.store, "create_queue")
    with pytest.raises(Broken):
        asu.core.finish_user_registration(finish, NOW)
    monkeypatch.undo()   # the real method again
    assert calls == ["create_queue"]
    assert _as_rows(asu) == before == {t: 0 for t in before}
    assert not asu.core.accounts.user_exists(reg.client_id.user_id)
    assert asu.core.accounts.get_client(reg.client_id) is None
    # the registration is still pending and now goes through whole
    asu.core.finish_user_registration(finish, NOW)
    assert _as_rows(asu) == {"users": 1, "clients": 1, "connection_packages": 0, "as_direct_queues": 1,
                             "as_direct_ratchets": 1}


def test_as_account_deletion_whose_queue_deletion_fails_deletes_nothing(asu, broken):
    ident = asu.register(password=b"secret", packages=2)
    state, req = ident.initiate_2fa(NOW)
    delete = ident.delete_user(state, asu.core.initiate_2fa(req, NOW), NOW)
    before = _as_rows(asu)
    calls = broken(asu.core.queues.store, "delete_queue")
    with pytest.raises(Broken):
        asu.core.delete_user(delete, NOW)
    assert calls == ["delete_queue"]
    assert _as_rows(asu) == before
    assert asu.core.accounts.get_client(ident.client_id) is not None
    assert asu.core.queues.info(direct_queue_id(ident.client_id)).message_count == 0


# --- QS: user and client records with their queues ----------------------------------------

@pytest.fixture
def qs(tmp_path):
    return make_core("a.example", sqlite_dir=tmp_path)


def _qs_rows(core) -> dict[str, int]:
    conn = core.records.connection
    return {t: count(conn, t) for t in ("qs_users", "qs_clients", "qs_queues", "qs_ratchets", "qs_messages")}


def test_qs_user_record_whose_queue_fails_is_not_created(qs, broken):
    calls = broken(qs.queues.store, "create_queue")
    with pytest.raises(Broken):
        Client.register(qs)
    assert calls == ["create_queue"]
    assert _qs_rows(qs) == {"qs_users": 0, "qs_clients": 0, "qs_queues": 0, "qs_ratchets": 0, "qs_messages": 0}


def test_qs_client_record_whose_queue_fails_is_not_created(qs, broken):
    alice = Client.register(qs)
    before = _qs_rows(qs)
    calls = broken(qs.queues.store, "create_queue")
    params = CreateClientRecordParams(alice.qs_uid, SigningKey.generate().public, HpkeKeyPair.generate().public)
    with pytest.raises(Broken):
        qs.create_client_record(alice.request("create_client_record", params, as_user=True), NOW)
    assert calls == ["create_queue"] and _qs_rows(qs) == before
    assert len(qs.records.get_user(alice.qs_uid)[1]) == 1


def test_qs_client_record_update_whose_queue_key_fails_changes_nothing(qs, broken):
    alice = Client.register(qs)
    old = qs.records.get_client(alice.qs_cid)
    calls = broken(qs.queues.store, "append")   # the ratchet update sealed to the new queue key
    params = UpdateClientRecordParams(alice.qs_cid, SigningKey.generate().public, HpkeKeyPair.generate().public,
                                      b"push")
    with pytest.raises(Broken):
        qs.update_client_record(alice.request("update_client_record", params), NOW)
    assert calls == ["append"]
    assert qs.records.get_client(alice.qs_cid) == old
    assert qs.queues.info(encode(alice.qs_cid)).key_material.queue_encryption_key == old.queue_encryption_key


def test_qs_user_record_deletion_whose_queue_deletion_fails_deletes_nothing(qs, broken):
    alice = Client.register(qs)
    params = CreateClientRecordParams(alice.qs_uid, SigningKey.generate().public, HpkeKeyPair.generate().public)
    second = qs.create_client_record(alice.request("create_client_record", params, as_user=True), NOW).qs_cid
    before = _qs_rows(qs)
    deleted: list = []
    qs.on_clients_deleted = deleted.append
    calls = broken(qs.queues.store, "delete_queue")
    with pytest.raises(Broken):
        qs.delete_user_record(alice.request("delete_user_record", DeleteUserRecordParams(alice.qs_uid),
                                            as_user=True), NOW)
    assert calls == ["delete_queue"] and _qs_rows(qs) == before and deleted == []
    assert {c.qs_cid for c in qs.records.get_user(alice.qs_uid)[1]} == {alice.qs_cid, second}


def test_qs_client_record_deletion_whose_queue_deletion_fails_deletes_nothing(qs, broken):
    alice = Client.register(qs)
    before = _qs_rows(qs)
    calls = broken(qs.queues.store, "delete_queue")
    with pytest.raises(Broken):
        qs.delete_client_record(alice.request("delete_client_record", DeleteClientRecordParams(alice.qs_cid)),
                                NOW)
    assert calls == ["delete_queue"] and _qs_rows(qs) == before
    assert qs.records.get_client(alice.qs_cid) is not None and qs.records.get_user(alice.qs_uid) is not None


def test_qs_pruning_whose_queue_deletion_fails_keeps_the_record(qs, broken):
    alice = Client.register(qs)
    before = _qs_rows(qs)
    calls = broken(qs.queues.store, "delete_queue")
    with pytest.raises(Broken):
        qs.prune_inactive(NOW + qs.config.max_client_record_age_ms + 1)
    assert calls == ["delete_queue"] and _qs_rows(qs) == before
    assert qs.records.get_client(alice.qs_cid) is not None
