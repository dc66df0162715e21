"""The AS state survives a restart of the homeserver process
(``spec/authentication_service.md#as-state``: everything but the ephemeral
OPAQUE DB is stored): user entries with their OPAQUE records and the AS OPAQUE
key material (so the password still logs in), client entries, direct queues,
the Privacy Pass issuer keys and the spent tokens (shared by AS, DS and QS).
Runs in-process (new app on the same data directory) and on real sockets
(the server is stopped, its port closed, and a new server started).
"""

import dataclasses
import os
import uuid

import pytest

from phoenix_ref.authentication import messages as m
from phoenix_ref.client.as_client import AsClient, Registration
from phoenix_ref.client.session import ClientSession
from phoenix_ref.errors import ProtocolError, Unauthorized
from phoenix_ref.ids import Fqdn, GroupId
from phoenix_ref.spec_plugin import spec

pytestmark = pytest.mark.needs_control("restarts of the homeserver process and its sweeper's pruning on a moved clock")

A = Fqdn("a.example")


@spec("spec/authentication_service.md#as-state", "informative")
@spec("spec/authentication_service.md#initiate-2fa-operation", "MUST")
async def test_register_restart_and_log_in_with_the_password_again(deployment):
    d = deployment
    async with d.client() as http:
        alice = await ClientSession.register(http, A, password=b"open sesame", clock=d.clock)
        await alice.update_profile(b"profile ciphertext")
        key_before = await alice.login()
        kept = await alice.token(A)                      # issued before the restart
        spent = await alice.token(A)
        await alice.as_client.call(A, "user_profile", m.UserProfileParams(alice.user_id), privacy_pass=spent)
        bob = await ClientSession.register(http, A, clock=d.clock)
        package = await bob.connection_package(alice.user_id)
        gid = GroupId(A, uuid.uuid4())
        await bob.send_connection_establishment(package, gid, os.urandom(32), os.urandom(32))

        await d.restart("hs1")
    async with d.client() as http:     # the old server's connections are gone: connect again
        alice.as_client = bob.as_client = AsClient(http)
        # the password logs in again: the OPAQUE record and server key material were kept
        key_after = await alice.login()
        assert len(key_after) == len(key_before) and key_after != key_before   # a fresh session
        wrong = ClientSession(alice.as_client, dataclasses.replace(alice.identity, password=b"open sesame!"),
                              clock=d.clock)
        wrong.wallet = alice.wallet
        with pytest.raises(Unauthorized):
            await wrong.login()
        # user entry, client entry and direct queue are still there
        assert await alice.profile(alice.user_id) == b"profile ciphertext"
        [cep] = await alice.dequeue_connection_messages()
        assert cep.connection_group_id == gid and cep.sender_client_credential == bob.credential
        # the issuer key persisted (old tokens still redeem) and so did the spent store
        await alice.as_client.call(A, "user_profile", m.UserProfileParams(alice.user_id), privacy_pass=kept)
        with pytest.raises(ProtocolError) as info:
            await alice.as_client.call(A, "user_profile", m.UserProfileParams(alice.user_id), privacy_pass=spent)
        assert info.value.code == "token_spent"
        # and the OPAQUE login finishes on the server: account deletion (Client 2FA)
        await alice.delete_account()
        with pytest.raises(ProtocolError) as info:
            await bob.profile(alice.user_id)
        assert info.value.status == 404


@spec("spec/authentication_service.md#finish-user-registration", "MUST")
async def test_a_registration_pending_at_restart_must_start_over(deployment):
    """The ephemeral OPAQUE DB lives in memory only (#as-state)."""
    d = deployment
    async with d.client() as http:
        c, now = AsClient(http), d.clock.now_ms()
        inter = (await c.as_credentials(A)).signing_intermediate(now)
        reg, init = Registration.start(A, b"pw", inter.fingerprint(), now,
                                       validity_ms=inter.expiration_data.not_after - now)
        finish = reg.finish(await c.call(A, "init_user_registration", init), now)
        await d.restart("hs1")
    async with d.client() as http:
        with pytest.raises(ProtocolError) as info:
            await AsClient(http).call(A, "finish_user_registration", finish)
        assert (info.value.status, info.value.code) == (401, "no_pending_opaque")
        # the same user id registers from scratch
        uid = reg.client_id.user_id
        again = await ClientSession.register(http, A, clock=d.clock, user_id=uid)
        assert again.user_id == uid


@spec("spec/authentication_service.md#configuration", "informative")
async def test_inactive_client_entries_are_pruned_after_the_maximal_age(deployment):
    """"Maximal QS client record age: maximal age of an inactive client entry.
    Default: 90d" — a client that has not fetched from its direct queue for
    longer loses its entry (and, as the last client, its user entry)."""
    d = deployment
    async with d.client() as http:
        idle = await ClientSession.register(http, A, clock=d.clock)
        active = await ClientSession.register(http, A, clock=d.clock)
        service = d["hs1"].hs.as_service
        assert await service.prune_inactive(d.clock.now_ms()) == []
        d.clock.advance(60 * 24 * 3600 * 1000)
        assert await active.dequeue_connection_messages() == []      # activity: this month
        d.clock.advance(60 * 24 * 3600 * 1000)                       # 120 days after registration
        assert await service.prune_inactive(d.clock.now_ms()) == [idle.client_id]
        with pytest.raises(ProtocolError) as info:
            await idle.update_profile(b"x")
        assert info.value.code == "unknown_client"
        with pytest.raises(ProtocolError) as info:
            await active.profile(idle.user_id)
        assert info.value.code == "unknown_user"
        assert await active.profile(active.user_id) == b""
