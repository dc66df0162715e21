"""The fan-out queue's record (``spec/queuing_service.md#overview``): an
optional push token, stored encrypted under a key only the client holds,
and the key material of the queue's encryption.

The first test is black-box (HTTPS through the client library); the second
reads what the QS stored and so needs control of the homeserver.
"""

from __future__ import annotations

import pytest
import trio

from phoenix_ref.client.phoenix_credentials import new_symmetric_key
from phoenix_ref.crypto import NN, HpkeKeyPair, aead_open, aead_seal, random_bytes
from phoenix_ref.queue_crypto import QueueDecryptError, read_queue_messages
from phoenix_ref.queuing import messages as m
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment
from spec_tests.test_ds_groups import A, B, until, users

OVERVIEW = "spec/queuing_service.md#overview"


def sealed_push_token(key: bytes, token: bytes) -> bytes:
    """A push token as a client hands it to its QS: encrypted under its push-token key."""
    nonce = random_bytes(NN)
    return nonce + aead_seal(key, nonce, b"push token", token)


async def update_record(client, queue_key, push_token):
    me = client.me
    await client.qs.send(me, "update_client_record", m.UpdateClientRecordParams(
        me.qs_cid, me.client_key.public, queue_key.public, push_token))


async def text_arrives(gid, sender, receiver, body: bytes):
    await sender.send(gid, body)
    await until(lambda: body in receiver.text_bodies(gid), receiver)


@spec(OVERVIEW, "MAY")
async def test_a_queue_works_with_and_without_a_push_token_and_takes_new_key_material(deployment_mode):
    async with Deployment(deployment_mode, ["hs1", "hs2"]) as d, d.client() as http:
        alice, bob = await users(d, http, A, B)
        gid = await alice.create_group()
        await alice.invite(gid, [bob.user_id])
        await until(lambda: gid in bob.groups, bob)
        await text_arrives(gid, alice, bob, b"no push token")         # bob's record was made without one

        push_key = new_symmetric_key()
        await update_record(bob, bob.me.queue_key, sealed_push_token(push_key, b"device-token-1"))
        await text_arrives(gid, alice, bob, b"with a push token")

        # new queue encryption key material, and the push token dropped again
        old, new = bob.me.queue_key, HpkeKeyPair.generate()
        await update_record(bob, new, None)
        bob.me.queue_key = new
        await bob.update_queue_info(gid)      # the group's sealed config, sealed with the new key
        await alice.send(gid, b"under the new key")
        with trio.fail_after(30):            # the ratchet key update sealed to the new key, then the text
            while len(raw := (await bob.qs.dequeue(bob.me)).messages) < 2:
                await trio.sleep(0.05)
        with pytest.raises(QueueDecryptError):     # the old key no longer reads the queue
            read_queue_messages(old.private, bob.me.ratchet, raw)
        await until(lambda: b"under the new key" in bob.text_bodies(gid), bob)
        user = await bob.qs.send(bob.me, "get_user_record", m.UserRecordParams(bob.me.qs_uid))
        assert [c.queue_encryption_key for c in user.client_records] == [new.public]


@spec(OVERVIEW, "MAY")
@pytest.mark.needs_control("reads the QS's client record from hs2's store")
async def test_the_qs_keeps_the_push_token_only_as_the_client_encrypted_it():
    async with Deployment("in_process", ["hs1", "hs2"]) as d, d.client() as http:
        [bob] = await users(d, http, B)
        records = d["hs2"].hs.qs.core.records
        assert records.get_client(bob.me.qs_cid).encrypted_push_token is None     # optional: none at first
        push_key = new_symmetric_key()
        sealed = sealed_push_token(push_key, b"device-token-1")
        await update_record(bob, bob.me.queue_key, sealed)
        stored = records.get_client(bob.me.qs_cid).encrypted_push_token
        assert stored == sealed and b"device-token-1" not in stored
        assert aead_open(push_key, stored[:NN], b"push token", stored[NN:]) == b"device-token-1"
        await update_record(bob, bob.me.queue_key, None)
        assert records.get_client(bob.me.qs_cid).encrypted_push_token is None
