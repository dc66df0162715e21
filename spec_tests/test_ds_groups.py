"""Delivery Service groups across homeservers, black-box: HTTPS through the
client library (:class:`~phoenix_ref.client.messenger.Messenger`) only."""

from __future__ import annotations

import trio

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
