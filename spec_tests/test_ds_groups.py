"""Delivery Service groups across homeservers, black-box: HTTPS through the
client library (:class:`~phoenix_ref.client.messenger.Messenger`) only."""

from __future__ import annotations

import pytest
import trio

from phoenix_ref.config import Limits
from phoenix_ref.delivery.core import DAY_MS
from phoenix_ref.errors import NotFound, ProtocolError
from phoenix_ref.mls.messages import Remove
from phoenix_ref.queuing.messages import DeleteUserRecordParams

from phoenix_ref.client.messenger import Messenger
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment

A, B, C = "a.example", "b.example", "c.example"


async def users(d, http, *domains):
    out = [await Messenger.register(http, dom, clock=d.clock) for dom in domains]
    for x in out:
        for y in out:
            if x is not y:
                x.add_contact(y.card())
        await x.trust_domains(*{u.domain for u in out})
    return out


async def until(condition, *ms, timeout: float = 30):
    """Receive at ``ms`` until ``condition()`` holds (federation is asynchronous)."""
    with trio.fail_after(timeout):
        while True:
            for m in ms:
                await m.receive()
            if condition():
                return
            await trio.sleep(0.05)


def agree(*ms, group_id):
    """Every member is in the same epoch with the same epoch authenticator."""
    groups = [m.groups[group_id].group for m in ms]
    assert len({g.epoch for g in groups}) == 1, [g.epoch for g in groups]
    assert len({g.epoch_authenticator for g in groups}) == 1


@spec("spec/delivery_service.md#create-group", "informative")
@spec("spec/delivery_service.md#adding-new-users-to-the-group", "MUST")
@spec("spec/delivery_service.md#send-application-message", "informative")
async def test_a_group_across_two_homeservers(deployment_mode):
    async with Deployment(deployment_mode, ["hs1", "hs2"]) as d, d.client() as http:
        alice, bob = await users(d, http, A, B)
        gid = await alice.create_group()
        await alice.invite(gid, [bob.user_id])
        await until(lambda: gid in bob.groups, bob)
        agree(alice, bob, group_id=gid)
        await alice.send(gid, b"hi bob")
        await bob.send(gid, b"hi alice")
        await until(lambda: bob.text_bodies(gid) and alice.text_bodies(gid), alice, bob)
        assert bob.text_bodies(gid) == [b"hi bob"]
        assert alice.text_bodies(gid) == [b"hi alice"]


def texts(m, gid):
    return sorted(m.text_bodies(gid))


async def chat(gid, *ms):
    """Everyone sends one message; every other member gets each exactly once."""
    before = {id(m): texts(m, gid) for m in ms}
    for m in ms:
        await m.send(gid, f"from {m.user_id}".encode())

    def done():
        return all(len(texts(m, gid)) == len(before[id(m)]) + len(ms) - 1 for m in ms)
    await until(done, *ms)
    await trio.sleep(0.2)
    for m in ms:
        await m.receive()
        expected = sorted(before[id(m)] + [f"from {o.user_id}".encode() for o in ms if o is not m])
        assert texts(m, gid) == expected


@spec("spec/delivery_service.md#remove-users", "MUST")
@spec("spec/delivery_service.md#updating-the-sending-clients-own-key-material", "MUST")
@spec("spec/delivery_service.md#user-self-remove", "MUST")
@spec("spec/delivery_service.md#delete-group", "MUST")
@spec("spec/federation/use_cases.md#message-distribution", "informative")
async def test_the_life_of_a_group_on_three_homeservers(deployment_mode):
    async with Deployment(deployment_mode, ["hs1", "hs2", "hs3"]) as d, d.client() as http:
        alice, bob, carol, dave = await users(d, http, A, B, C, B)
        gid = await alice.create_group()
        await alice.invite(gid, [bob.user_id, carol.user_id, dave.user_id])
        everyone = [alice, bob, carol, dave]
        await until(lambda: all(gid in m.groups for m in everyone), *everyone)
        agree(*everyone, group_id=gid)
        await chat(gid, *everyone)

        await alice.remove(gid, [bob.user_id])                 # an admin removes a remote user
        await until(lambda: gid not in bob.groups and all(
            m.groups[gid].group.epoch == alice.groups[gid].group.epoch for m in (carol, dave)), bob, carol, dave)
        assert ("removed", gid) in bob.events
        rest = [alice, carol, dave]
        agree(*rest, group_id=gid)

        await dave.update(gid)                                   # a member updates
        await until(lambda: all(m.groups[gid].group.epoch == dave.groups[gid].group.epoch for m in rest), *rest)
        agree(*rest, group_id=gid)
        await chat(gid, *rest)

        await carol.leave(gid)                                   # a self-remove proposal ...
        await until(lambda: len(alice.groups[gid].group.proposals) == 1, alice)
        await alice.update(gid)                                  # ... committed by the next update
        await until(lambda: gid not in carol.groups and dave.groups[gid].group.epoch ==
                    alice.groups[gid].group.epoch, carol, dave)
        agree(alice, dave, group_id=gid)
        assert len(alice.groups[gid].members) == 2
        await chat(gid, alice, dave)

        kept = alice.groups[gid]
        await alice.delete_group(gid)
        await until(lambda: gid not in dave.groups, dave)
        probe = kept.send_request(b"anyone?")
        with pytest.raises(NotFound) as e:                       # the DS no longer knows the group
            await alice.ds(A, probe.name, probe.body)
        assert e.value.code == "unknown_group"


async def trio_of_members(d, http, domains=(A, B, C)):
    ms = await users(d, http, *domains)
    gid = await ms[0].create_group()
    await ms[0].invite(gid, [m.user_id for m in ms[1:]])
    await until(lambda: all(gid in m.groups for m in ms), *ms)
    return gid, ms


@spec("spec/delivery_service.md#validation", "informative")
async def test_two_commits_for_one_epoch_one_wins(deployment_mode):
    async with Deployment(deployment_mode, ["hs1", "hs2", "hs3"]) as d, d.client() as http:
        gid, (alice, bob, carol) = await trio_of_members(d, http)
        outcomes = {}

        async def update(m):
            try:
                await m.update(gid)
                outcomes[m.user_id] = "applied"
            except ProtocolError as e:
                outcomes[m.user_id] = (e.status, e.code)
        async with trio.open_nursery() as n:          # both commit in the same epoch at the same time
            n.start_soon(update, bob)
            n.start_soon(update, carol)
        assert sorted(map(str, outcomes.values())) == sorted(["applied", str((409, "wrong_epoch"))])
        loser = bob if outcomes[bob.user_id] != "applied" else carol
        await loser.commit_with_retry(gid, lambda: loser.update(gid))    # catches up, commits next epoch
        everyone = [alice, bob, carol]
        await until(lambda: len({m.groups[gid].group.epoch for m in everyone}) == 1, *everyone)
        agree(*everyone, group_id=gid)
        assert alice.groups[gid].group.epoch == 3       # the add, the winner, the loser's retry
        await chat(gid, *everyone)


@spec("spec/delivery_service.md#message-distribution", "SHOULD")
@spec("spec/delivery_service.md#ds-induced-removals", "informative")
async def test_a_deleted_remote_queue_leads_to_a_ds_removal(deployment_mode):
    async with Deployment(deployment_mode, ["hs1", "hs2", "hs3"]) as d, d.client() as http:
        gid, (alice, bob, carol) = await trio_of_members(d, http)
        bob_leaf = alice.leaf_of(gid, bob.user_id)
        await bob.qs.send(bob.me, "delete_user_record", DeleteUserRecordParams(bob.me.qs_uid))

        def proposed():
            return any(isinstance(p.proposal, Remove) and p.proposal.removed == bob_leaf
                       for p in alice.groups[gid].group.proposals)
        with trio.fail_after(30):                      # the QueueDeleted answer travels back from b.example
            while not proposed():
                await alice.send(gid, b"is bob there?")
                await until(lambda: True, alice, carol)
                await trio.sleep(0.1)
        await carol.receive()
        await alice.update(gid)                         # the next update commits the DS's proposal
        await until(lambda: carol.groups[gid].group.epoch == alice.groups[gid].group.epoch, carol)
        agree(alice, carol, group_id=gid)
        assert bob_leaf not in alice.groups[gid].members
        assert alice.groups[gid].group.tree.leaf(bob_leaf) is None


@spec("spec/delivery_service.md#ds-induced-removals", "informative")
@spec("spec/delivery_service.md#activity-times", "informative")
@pytest.mark.needs_control("the homeservers' shared clock")
async def test_an_inactive_member_is_removed(deployment_mode):
    limits = Limits(ds_max_inactivity_days=1)
    async with Deployment(deployment_mode, ["hs1", "hs2", "hs3"], limits=limits) as d, d.client() as http:
        gid, (alice, bob, carol) = await trio_of_members(d, http)
        d.clock.advance(DAY_MS)
        for m in (alice, carol):                        # alice and carol commit, bob stays idle
            await m.commit_with_retry(gid, lambda m=m: m.update(gid))
        # bob fetches both commits too (fetching is no DS request, so he stays idle): a
        # copy still in a federation queue when the clock jumps a day would expire
        # there (message_expired), and bob would miss an epoch
        await until(lambda: alice.groups[gid].group.epoch == carol.groups[gid].group.epoch
                    == bob.groups[gid].group.epoch, alice, bob)
        d.clock.advance(DAY_MS)
        bob_leaf = alice.leaf_of(gid, bob.user_id)
        await alice.send(gid, b"still here")            # the DS sees bob idle for two days
        await until(lambda: len(alice.groups[gid].group.proposals) == 1, alice)
        await alice.update(gid)
        await until(lambda: gid not in bob.groups and carol.groups[gid].group.epoch ==
                    alice.groups[gid].group.epoch, bob, carol)
        agree(alice, carol, group_id=gid)
        assert alice.groups[gid].group.tree.leaf(bob_leaf) is None


@spec("spec/delivery_service/group_state_encryption.md#encryption-at-rest-ear", "informative")
async def test_a_wrong_ear_key_is_refused_and_changes_nothing(deployment_mode):
    async with Deployment(deployment_mode, ["hs1", "hs2"]) as d, d.client() as http:
        gid, (alice, bob) = await trio_of_members(d, http, (A, B))
        member = alice.groups[gid]
        real = member.ear_key
        member.ear_key = bytes(16)
        with pytest.raises(ProtocolError) as e:
            await alice.update(gid)
        assert (e.value.status, e.value.code) == (403, "wrong_ear_key")
        member.ear_key = real
        await alice.update(gid)                           # the state was untouched: epoch 1 → 2
        await until(lambda: bob.groups[gid].group.epoch == 2, bob)
        agree(alice, bob, group_id=gid)


@spec("spec/delivery_service.md#adding-new-users-to-the-group", "MUST")
@spec("spec/delivery_service.md#remove-users", "MUST")
@spec("spec/delivery_service.md#proposal-store", "MUST")
async def test_admin_and_proposal_store_rules(deployment_mode):
    async with Deployment(deployment_mode, ["hs1", "hs2", "hs3"]) as d, d.client() as http:
        gid, (alice, bob, carol) = await trio_of_members(d, http)
        with pytest.raises(ProtocolError) as e:          # bob is no admin
            await bob.remove(gid, [carol.user_id])
        assert (e.value.status, e.value.code) == (403, "not_admin")
        await carol.leave(gid)                            # the store now holds carol's proposal
        await until(lambda: len(alice.groups[gid].group.proposals) == 1, alice)
        with pytest.raises(ProtocolError) as e:
            await alice.remove(gid, [bob.user_id])
        assert (e.value.status, e.value.code) == (409, "proposal_store_not_empty")
        await bob.send(gid, b"messages still flow")       # the DS takes them (A14); bob has not seen it yet
        await until(lambda: alice.text_bodies(gid), alice)
        await alice.update(gid)
        await until(lambda: gid not in carol.groups and bob.groups[gid].group.epoch ==
                    alice.groups[gid].group.epoch, bob, carol)
        agree(alice, bob, group_id=gid)
        assert alice.text_bodies(gid) == [b"messages still flow"]


@spec("spec/glossary.md#rolesextension", "informative")
@spec("spec/delivery_service.md#remove-users", "MUST")
async def test_roles_follow_the_members(deployment_mode):
    async with Deployment(deployment_mode, ["hs1", "hs2", "hs3"]) as d, d.client() as http:
        gid, (alice, bob, carol) = await trio_of_members(d, http)
        with pytest.raises(ProtocolError) as e:          # a member cannot make itself admin
            await bob.set_admins(gid, [alice.user_id, bob.user_id])
        assert (e.value.status, e.value.code) == (403, "not_admin")
        await alice.set_admins(gid, [alice.user_id, bob.user_id])
        await until(lambda: bob.groups[gid].is_admin() and carol.groups[gid].group.epoch == 2, bob, carol)
        await alice.leave(gid)                            # an admin leaves ...
        await until(lambda: len(carol.groups[gid].group.proposals) == 1, carol)
        await carol.update(gid)                           # ... a member commits it and drops her from the roles
        await until(lambda: gid not in alice.groups and bob.groups[gid].group.epoch ==
                    carol.groups[gid].group.epoch, alice, bob)
        agree(bob, carol, group_id=gid)
        assert list(bob.groups[gid].roles().admins) == [bob.groups[gid].group.leaf_index]
        await bob.remove(gid, [carol.user_id])            # the remaining admin's rights hold
        await until(lambda: gid not in carol.groups, carol)
