"""Deletion really deletes: after a user is gone, no file of the homeserver's
data directory holds anything that names them
(``spec/threat_model/stride/security_requirements.md#metadata-minimalism``:
metadata not needed later "MUST be deleted immediately"; docs/storage.md).

A homeserver with a real data directory lives a scripted life: three users
register, set profiles, upload connection packages, create QS records,
publish KeyPackages, receive a fan-out and dequeue it, exchange a connection
request. Then bob deletes himself (his QS user record and his AS account,
as a client does) and the operator deletes carol (``phoenix-ref admin
delete-user``). While the homeserver still runs, every file of the data
directory — the databases and their ``-wal`` and ``-shm`` files — is read
byte by byte and searched for bob's and carol's identifiers, keys, profile
and credential bytes.

The same life with SQLite's ``secure_delete`` off, or without the WAL
checkpoint after deletions (the behaviour before this test existed), leaves
traces, and the scan finds them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import trio

from phoenix_ref import storage
from phoenix_ref.cli import main
from phoenix_ref.client.qs_client import QsClient
from phoenix_ref.client.session import ClientSession
from phoenix_ref.codec import encode
from phoenix_ref.ids import Fqdn, GroupId
from phoenix_ref.queuing import messages as m
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment
from tests.qs_helpers import fan_out, make_key_package

A = Fqdn("a.example")

def _as_needles(s: ClientSession, profile: bytes) -> dict[str, bytes]:
    uid, cid = s.user_id, s.client_id
    return {"user id (wire)": encode(uid), "user uuid": uid.user_id.bytes, "client id (wire)": encode(cid),
            "client uuid": cid.client_uuid.bytes, "profile": profile, "credential": encode(s.credential),
            "credential key": s.credential.public_key, "user id (text)": str(uid).encode(),
            "client id (text)": str(cid).encode()}


def _qs_needles(me, add: m.AddPackage) -> dict[str, bytes]:
    return {"QsUid": encode(me.qs_uid), "QsCid": encode(me.qs_cid), "friendship token": me.friendship_token,
            "user record key": me.user_key.public, "client record key": me.client_key.public,
            "queue key": me.queue_key.public, "KeyPackage bytes": add.encrypted_client_credential}


async def _life(d: Deployment) -> dict[str, dict[str, bytes]]:
    """The scripted life; returns the deleted users' identifiers by name."""
    hs = d["hs1"].hs
    async with d.client() as http:
        users = {name: await ClientSession.register(http, A, clock=d.clock, connection_packages=2)
                 for name in ("alice", "bob", "carol")}
        qs = QsClient(http, now_ms=d.clock.now_ms, privacy_pass=users["alice"].token)
        key = await qs.queue_config_key(A)
        profiles, records, adds = {}, {}, {}
        for name, s in users.items():
            profiles[name] = f"profile of {name} ".encode() + os.urandom(16)
            await s.update_profile(profiles[name])
            await s.upload_connection_packages(2)
            me = records[name] = await qs.register(A)
            kp = make_key_package(str(A), me.sealed_config(key), last_resort=True, now_ms=d.clock.now_ms())
            adds[name] = m.AddPackage(kp, os.urandom(40), os.urandom(40))
            await qs.send(me, "publish_key_packages", m.PublishKeyPackagesParams(me.qs_cid, [adds[name]]))
        group = GroupId(A, uuid.uuid4())
        configs = [await qs.client_queue_config(me) for me in records.values()]
        await hs.qs.local_enqueue(fan_out(configs, group, b"to everyone"))
        for me in records.values():
            assert len(await qs.receive(me)) == 1
        package = await users["alice"].connection_package(users["bob"].user_id)
        await users["alice"].send_connection_establishment(package, group, os.urandom(32), os.urandom(32))
        assert len(await users["bob"].dequeue_connection_messages()) == 1
        await qs.call(A, "get_add_package", m.AddPackageParams(records["bob"].friendship_token))

        # bob leaves as a client does: his QS user record, then his account
        await qs.send(records["bob"], "delete_user_record", m.DeleteUserRecordParams(records["bob"].qs_uid))
        await users["bob"].delete_account()
        # the operator deletes carol at the AS (her QS record names no user, decision)
        code = await trio.to_thread.run_sync(
            main, ["admin", "--config", str(d["hs1"].dir / "config.toml"), "delete-user", str(users["carol"].user_id)])
        assert code == 0
        # alice carries on
        await users["alice"].update_profile(b"alice again")
        assert len(await users["alice"].dequeue_connection_messages()) == 0
    return {"bob": _as_needles(users["bob"], profiles["bob"]) | _qs_needles(records["bob"], adds["bob"]),
            "carol": _as_needles(users["carol"], profiles["carol"]),
            "alice": _as_needles(users["alice"], b"alice again")}


def _scan(data_dir: Path, needles: dict[str, bytes]) -> list[str]:
    """``file: what`` for every needle found in any file of ``data_dir``."""
    found = []
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        blob = path.read_bytes()
        for what, needle in needles.items():
            if needle in blob:
                found.append(f"{path.name}: {what}")
    return found


async def _run() -> tuple[list[str], list[str], list[str]]:
    async with Deployment("in_process", ["hs1"]) as d:
        gone = await _life(d)
        data = d["hs1"].config.data_dir
        names = {p.name for p in data.iterdir()}
        assert {"as.sqlite3", "as.sqlite3-wal", "qs.sqlite3-shm"} <= names   # scanned while it runs
        alice = _scan(data, gone["alice"])
        return _scan(data, gone["bob"]), _scan(data, gone["carol"]), alice


@spec("threat_model/stride/security_requirements.md#metadata-minimalism", "MUST")
@spec("spec/authentication_service.md#user-account-deletion", "informative")
async def test_no_file_of_the_data_directory_names_a_deleted_user():
    bob, carol, alice = await _run()
    assert bob == [] and carol == []
    # the scan finds what is there: the remaining user is named in the files
    assert any("profile" in f for f in alice) and any("credential" in f for f in alice)


@spec("threat_model/stride/security_requirements.md#metadata-minimalism", "MUST")
@pytest.mark.parametrize("left_out", ["secure_delete", "checkpoint"])
async def test_without_secure_delete_or_checkpoint_the_scan_finds_traces(monkeypatch, left_out):
    """The controls: with either left out, the deleted rows stay in the files
    (without ``secure_delete`` in the database file, without the checkpoint
    in the ``-wal`` file)."""
    plain = storage.Connection.execute

    def without_wiping(self, sql, *args):
        if left_out == "secure_delete" and sql == "PRAGMA secure_delete=ON":
            sql = "PRAGMA secure_delete=OFF"
        elif left_out == "checkpoint" and sql == "PRAGMA wal_checkpoint(TRUNCATE)":
            sql = "SELECT 0, 0, 0"
        return plain(self, sql, *args)

    monkeypatch.setattr(storage.Connection, "execute", without_wiping)
    bob, carol, _ = await _run()
    suffix = "sqlite3:" if left_out == "secure_delete" else "sqlite3-wal:"
    assert any(f.startswith(f"as.{suffix} profile") for f in bob)
    assert any(f.startswith(f"qs.{suffix} friendship token") for f in bob)
    assert any(f.startswith(f"as.{suffix} credential") for f in carol)
