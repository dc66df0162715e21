"""Delivery Service groups across homeservers, black-box: HTTPS through the
client library (:class:`~phoenix_ref.client.messenger.Messenger`) only."""

from __future__ import annotations

import pytest
import trio

from phoenix_ref.errors import NotFound

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


@spec("spec/delivery_service.md#create-group", "MUST")
@spec("spec/delivery_service.md#adding-new-users-to-the-group", "MUST")
@spec("spec/delivery_service.md#send-application-message", "MUST")
async def test_a_group_across_two_homeservers(deployment_mode):
    async with Deployment(deployment_mode, ["hs1", "hs2"]) as d, d.client() as http:
        alice, bob = await users(d, http, A, B)
        gid = await alice.create_group()
        await alice.invite(gid, [bob.user_id])
        await until(lambda: gid in bob.groups, bob)
        agree(alice, bob, group_id=gid)
        await alice.send(gid, b"hi bob")
        await bob.send(gid, b"hi alice")
        await until(lambda: bob.groups[gid].received and alice.groups[gid].received, alice, bob)
        assert [r.data for r in bob.groups[gid].received] == [b"hi bob"]
        assert [r.data for r in alice.groups[gid].received] == [b"hi alice"]


def texts(m, gid):
    return sorted(r.data for r in m.groups[gid].received)


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
@spec("spec/federation/use_cases.md#message-distribution", "MUST")
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
