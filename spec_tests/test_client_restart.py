"""A client restarted mid-conversation, black-box over HTTPS: its whole
state (AS and QS identities, wallet, contacts, KeyPackages, groups, the
message log) comes back from its state directory, and it goes on reading
and writing as if it had never stopped."""

from __future__ import annotations

import os
import stat

import trio

from phoenix_ref.client.messenger import Messenger
from phoenix_ref.client.state_store import STATE_FILE
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment
from spec_tests.test_ds_groups import A, B, C, agree, chat, until


async def connected(d, http, tmp_path):
    """alice@A and bob@B, each with a state directory, connected by user id."""
    alice = await Messenger.register(http, A, clock=d.clock, state_dir=tmp_path / "alice")
    bob = await Messenger.register(http, B, clock=d.clock, state_dir=tmp_path / "bob")
    for m in (alice, bob):
        await m.trust_domains(A, B)
    gid = await alice.connect(bob.user_id)
    await bob.accept_connections()
    await until(lambda: bob.user_id in alice.contacts and alice.user_id in bob.contacts, alice, bob)
    return alice, bob, gid


def restarted(m: Messenger, http, d) -> Messenger:
    """Stop ``m`` (nothing of it is used again) and start a new client from its directory."""
    state_dir = m.store.path.parent
    m.close()
    return Messenger.open(state_dir, http, clock=d.clock)


@spec("spec/clients/creation.md#qs-registration", "informative")
@spec("spec/queuing_service.md#dequeue-messages", "informative")
@spec("spec/delivery_service.md#send-application-message", "informative")
async def test_a_client_restarted_mid_conversation_reads_on(deployment_mode, tmp_path):
    async with Deployment(deployment_mode, ["hs1", "hs2"]) as d, d.client() as http:
        alice, bob, _ = await connected(d, http, tmp_path)
        gid = await alice.create_group()
        await alice.invite(gid, [bob.user_id])
        await until(lambda: gid in bob.groups, bob)
        await alice.send(gid, b"before")
        await until(lambda: bob.text_bodies(gid) == [b"before"], bob)

        await alice.send(gid, b"while bob is away")      # waits in bob's queue
        await alice.update(gid)                           # a new epoch bob has not seen
        bob = restarted(bob, http, d)
        assert bob.text_bodies(gid) == [b"before"]        # the log came back
        await alice.send(gid, b"after")
        await until(lambda: len(bob.text_bodies(gid)) == 3, bob)
        assert bob.text_bodies(gid) == [b"before", b"while bob is away", b"after"]
        agree(alice, bob, group_id=gid)

        alice = restarted(alice, http, d)                 # the admin too, with her group and contacts
        await bob.send(gid, b"bob after his restart")
        await bob.update(gid)
        await until(lambda: alice.text_bodies(gid) == [b"bob after his restart"]
                    and alice.groups[gid].group.epoch == bob.groups[gid].group.epoch, alice)
        agree(alice, bob, group_id=gid)
        await trio.sleep(0.2)
        for m in (alice, bob):                            # nothing arrives twice after a restart
            await m.receive()
        assert bob.text_bodies(gid) == [b"before", b"while bob is away", b"after"]
        assert alice.text_bodies(gid) == [b"bob after his restart"]

        # what needs the restored keys: a new group with the contact, and a Welcome
        # opened with a KeyPackage published before the restart
        second = await alice.create_group()
        await alice.invite(second, [bob.user_id])
        await until(lambda: second in bob.groups, bob)
        agree(alice, bob, group_id=second)
        await alice.remove(second, [bob.user_id])
        await until(lambda: second not in bob.groups, bob)
        bob = restarted(bob, http, d)
        assert second not in bob.groups and gid in bob.groups
        alice.close()
        bob.close()


@spec("spec/clients/creation.md#qs-registration", "informative")
async def test_a_restarted_client_keeps_its_connection_keys_wallet_and_queue(deployment_mode, tmp_path):
    async with Deployment(deployment_mode, ["hs1", "hs2"]) as d, d.client() as http:
        alice = await Messenger.register(http, A, clock=d.clock, state_dir=tmp_path / "alice")
        bob = await Messenger.register(http, B, clock=d.clock, state_dir=tmp_path / "bob")
        for m in (alice, bob):
            await m.trust_domains(A, B)
        tokens = bob.session.wallet.count(B)
        assert tokens > 0
        bob = restarted(bob, http, d)
        assert bob.session.wallet.count(B) == tokens          # no token lost, none spent twice
        gid = await alice.connect(bob.user_id)                # sealed to bob's saved connection key
        assert await bob.accept_connections() == [gid]         # read from his saved direct queue
        await until(lambda: alice.user_id in bob.contacts and bob.user_id in alice.contacts, alice, bob)
        path = tmp_path / "bob" / STATE_FILE
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        alice.close()
        bob.close()


@spec("spec/authentication_service/credentials.md#leaf-credentials", "informative")
@spec("spec/delivery_service.md#adding-new-users-to-the-group", "MUST")
async def test_members_from_a_domain_not_trusted_yet_are_checked_after_fetching_its_credentials(deployment_mode):
    async with Deployment(deployment_mode, ["hs1", "hs2", "hs3"]) as d, d.client() as http:
        alice, bob, carol = [await Messenger.register(http, dom, clock=d.clock) for dom in (A, B, C)]
        await alice.trust_domains(A, B, C)
        await bob.trust_domains(B)          # bob and carol know only their own AS so far
        await carol.trust_domains(C)
        for m in (bob, carol):
            alice.add_contact(m.card())
            m.add_contact(alice.card())
        gid = await alice.create_group()
        await alice.invite(gid, [bob.user_id])
        await until(lambda: gid in bob.groups, bob)           # the Welcome brings alice@A
        await alice.invite(gid, [carol.user_id])
        await until(lambda: gid in carol.groups, carol)       # the Welcome brings alice@A and bob@B
        await until(lambda: bob.groups[gid].group.epoch == alice.groups[gid].group.epoch, bob)   # the commit brings carol@C
        assert {str(x) for x in bob.trusted} == {str(x) for x in carol.trusted} == {A, B, C}
        agree(alice, bob, carol, group_id=gid)
        assert {i.client_credential.client_id.user_id for i in bob.groups[gid].members.values()} == {
            alice.user_id, bob.user_id, carol.user_id}
        await chat(gid, alice, bob, carol)
