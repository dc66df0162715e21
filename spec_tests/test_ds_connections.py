"""Connections and resync, black-box over HTTPS through the client library:
connection establishment across homeservers by user id and by alias
(``spec/authentication_service/connection_establishment.md``), the DS's
external-commit endpoints, and a member that lost its state rejoining."""

from __future__ import annotations

import uuid
import pytest

from phoenix_ref.client.groups import GroupMember
from phoenix_ref.client.messenger import Messenger
from phoenix_ref.client.phoenix_credentials import CredentialInformation, new_leaf_identity
from phoenix_ref.delivery import messages as dsm
from phoenix_ref.errors import ProtocolError
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment
from spec_tests.test_ds_groups import A, B, C, agree, chat, trio_of_members, until

#: aliases carry this run's mark: a target keeps what earlier runs registered
RUN = uuid.uuid4().hex[:8]


async def registered(d, http, *domains):
    out = [await Messenger.register(http, dom, clock=d.clock) for dom in domains]
    for m in out:
        await m.trust_domains(*domains)
    return out


@spec("spec/authentication_service/connection_establishment.md#connection-group-creation", "MUST")
@spec("spec/delivery_service.md#get-external-commit-information", "informative")
@spec("spec/delivery_service.md#join-connection-group", "informative")
@spec("functional_requirements.md#functional-requirements-for-users", "MUST")
@spec("spec/delivery_service.md#authentication-9", "informative")   # join needs no more authentication
async def test_connections_by_user_id_and_by_alias_across_three_homeservers(deployment_mode):
    async with Deployment(deployment_mode, ["hs1", "hs2", "hs3"]) as d, d.client() as http:
        alice, bob, carol = await registered(d, http, A, B, C)
        await carol.session.register_alias("carol-the-cat." + RUN)
        with_bob = await alice.connect(bob.user_id)
        with_carol = await alice.connect(alias=(C, "carol-the-cat." + RUN))
        assert await bob.accept_connections() == [with_bob]
        assert await carol.accept_connections(alias="carol-the-cat." + RUN) == [with_carol]
        # the initiator sees the join and answers the responder's contact card with its own
        await until(lambda: bob.user_id in alice.contacts and carol.user_id in alice.contacts, alice)
        await until(lambda: alice.user_id in bob.contacts and alice.user_id in carol.contacts, bob, carol)
        agree(alice, bob, group_id=with_bob)
        agree(alice, carol, group_id=with_carol)
        await chat(with_bob, alice, bob)
        await chat(with_carol, alice, carol)
        # a connection lets alice add both to a group of her own
        gid = await alice.create_group()
        await alice.invite(gid, [bob.user_id, carol.user_id])
        await until(lambda: gid in bob.groups and gid in carol.groups, bob, carol)
        agree(alice, bob, carol, group_id=gid)
        await chat(gid, alice, bob, carol)


@spec("spec/delivery_service.md#join-connection-group", "informative")
async def test_a_group_of_two_users_is_no_connection_group(deployment_mode):
    async with Deployment(deployment_mode, ["hs1", "hs2"]) as d, d.client() as http:
        gid, (alice, bob) = await trio_of_members(d, http, (A, B))
        member = alice.groups[gid]
        info = await bob.ds(A, "ds_external_commit_info", dsm.ExternalCommitInfoParams(gid, member.ear_key))
        assert [c.leaf_index for c in info.credential_chains] == [0, 1]
        leaf = new_leaf_identity(bob.session.identity.signing_key, bob.session.credential, bob.now())
        _, request = GroupMember.join_external(gid, info, leaf, CredentialInformation(
            bob.session.credential, leaf.signature_encryption_key), member.ear_key, member.credential_key,
            await bob._queue_config(), bob.trust, d.clock)
        with pytest.raises(ProtocolError) as e:
            await bob.ds(A, request.name, request.body)
        assert (e.value.status, e.value.code) == (409, "not_a_connection_group")
        with pytest.raises(ProtocolError) as e:     # without the EAR key there is nothing to see
            await bob.ds(A, "ds_external_commit_info", dsm.ExternalCommitInfoParams(gid, bytes(16)))
        assert (e.value.status, e.value.code) == (403, "wrong_ear_key")


@spec("spec/delivery_service.md#resync", "MUST")
async def test_a_member_that_lost_its_state_resyncs(deployment_mode):
    async with Deployment(deployment_mode, ["hs1", "hs2", "hs3"]) as d, d.client() as http:
        gid, (alice, bob, carol) = await trio_of_members(d, http)
        await chat(gid, alice, bob, carol)
        old_leaf = bob.groups[gid].group.leaf_index
        await bob.resync(gid)                     # bob keeps the group's keys and his leaf identity only
        everyone = [alice, bob, carol]
        await until(lambda: len({m.groups[gid].group.epoch for m in everyone}) == 1, alice, carol)
        agree(*everyone, group_id=gid)
        assert bob.groups[gid].group.leaf_index == old_leaf     # the leftmost free leaf is his old one
        assert alice.groups[gid].members[old_leaf].client_credential == bob.session.credential
        await chat(gid, *everyone)
