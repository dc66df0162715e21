"""F10 receive in the client library: one dequeued message that cannot be
processed does not take the rest of the answer with it, and a member that
missed a commit rejoins through a resync (:meth:`Messenger.receive`).

The clients run against in-process homeservers over emulated TLS. Alice and
bob share one homeserver, whose DS hands its fan-outs to the local QS before
it answers: what alice sent is in bob's queue when her call returns, so a
test knows what one dequeue answer holds.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import httpx
import pytest

from phoenix_ref.client.groups import UnexpectedContent
from phoenix_ref.client.messenger import AppPayload, Messenger, TextMessage
from phoenix_ref.client_cli import _print_new
from phoenix_ref.codec import decode, encode
from phoenix_ref.delivery import messages as dsm
from phoenix_ref.queuing.messages import ApplicationContent, CommitContent, MessageContent
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment
from spec_tests.test_ds_groups import agree, users

A = "a.example"
RESYNC = "spec/delivery_service.md#resync"


async def invited(d, http, **bob_kwargs):
    """Alice's new group, bob (a new user) invited to it; bob has not received the Welcome yet."""
    alice, = await users(d, http, A)
    bob = await Messenger.register(http, A, clock=d.clock, **bob_kwargs)
    alice.add_contact(bob.card())
    bob.add_contact(alice.card())
    await bob.trust_domains(A)
    gid = await alice.create_group()
    await alice.invite(gid, [bob.user_id])
    return gid, alice, bob


async def group_of_two(d, http, **bob_kwargs):
    """Alice's group with bob in it, both on ``A``."""
    gid, alice, bob = await invited(d, http, **bob_kwargs)
    assert await bob.receive() == 1 and ("joined", gid) in bob.events
    return gid, alice, bob


async def send_raw(sender, gid, data: bytes, *, tamper: bool = False) -> None:
    """An application message with any ``data``; ``tamper`` flips a byte of
    its ciphertext (after the sender's ratchet moved, before signing the request)."""
    member = sender.groups[gid]
    message = member.group.encrypt(data)
    if tamper:
        pm = message.private_message
        broken = bytes(pm.ciphertext[:-1]) + bytes([pm.ciphertext[-1] ^ 1])
        message = dataclasses.replace(message, private_message=dataclasses.replace(pm, ciphertext=broken))
    request = member._request("ds_send_message", dsm.SendMessageParams(message, member.ear_key))
    await sender._submit(member, request)


def failures(m, gid):
    """``m``'s message_failed events for ``gid``, as the error class names."""
    return [e[2].split(":", 1)[0] for e in m.events if e[0] == "message_failed" and e[1] == gid]


def text(body: bytes) -> bytes:
    return encode(TextMessage(body), AppPayload)


@spec("spec/queuing_service.md#dequeue-messages", "informative")
async def test_messages_after_an_unreadable_one_are_still_handled(tmp_path):
    async with Deployment("in_process", ["hs1"]) as d, d.client() as http:
        gid, alice, bob = await group_of_two(d, http, state_dir=tmp_path / "bob")
        await alice.send(gid, b"one")
        await send_raw(alice, gid, b"\xee no app payload")          # MLS reads it, the payload does not parse
        await send_raw(alice, gid, text(b"never"), tamper=True)    # does not decrypt
        await alice.send(gid, b"four")
        assert await bob.receive() == 4                            # all four in one answer
        assert bob.text_bodies(gid) == [b"one", b"four"]
        assert failures(bob, gid) == ["DecodeError", "DecryptionFailed"]
        # what was processed was saved with the queue position past all four
        bob.close()
        again = Messenger.open(tmp_path / "bob", http, clock=d.clock)
        assert again.text_bodies(gid) == [b"one", b"four"]
        await alice.send(gid, b"five")
        assert await again.receive() == 1
        assert again.text_bodies(gid) == [b"one", b"four", b"five"]
        agree(alice, again, group_id=gid)
        again.close()


@spec("spec/glossary.md#fan-out-message", "informative")
async def test_a_proposal_in_an_application_envelope_is_refused_before_mls_sees_it():
    async with Deployment("in_process", ["hs1"]) as d, d.client() as http:
        gid, alice, bob = await group_of_two(d, http)
        proposal = alice.groups[gid].group.propose_remove(bob.groups[gid].group.leaf_index)
        with pytest.raises(UnexpectedContent):
            bob.groups[gid].process(ApplicationContent(proposal))
        assert len(bob.groups[gid].group.proposals) == 0          # not stored as a proposal either


async def test_a_bug_while_handling_is_not_swallowed(monkeypatch):
    async with Deployment("in_process", ["hs1"]) as d, d.client() as http:
        gid, alice, bob = await group_of_two(d, http)

        async def broken(*args):
            raise RuntimeError("a bug in the client")
        monkeypatch.setattr(bob, "_application", broken)
        await alice.send(gid, b"hi")
        with pytest.raises(RuntimeError, match="a bug in the client"):
            await bob.receive()
        assert not [e for e in bob.events if e[0] == "message_failed"]


@spec(RESYNC, "MUST")
async def test_a_member_that_missed_a_commit_resyncs_when_a_later_message_arrives():
    async with Deployment("in_process", ["hs1"]) as d, d.client() as http:
        gid, alice, bob = await group_of_two(d, http)
        bob_leaf = bob.groups[gid].group.leaf_index
        await alice.update(gid)
        lost = await bob.qs.receive(bob.me)             # the commit's copy never reaches bob's client
        assert [type(decode(MessageContent, p)) for p in lost] == [CommitContent]
        await alice.send(gid, b"in the epoch bob missed")
        await alice.send(gid, b"also in it")
        assert await bob.receive() == 2
        # the first message shows bob is behind: he resyncs once; neither message can be read
        assert failures(bob, gid) == ["WrongEpoch", "WrongEpoch"]
        assert [e for e in bob.events if e[0] in ("resynced", "resync_failed")] == [("resynced", gid)]
        assert bob.text_bodies(gid) == []
        assert await alice.receive() == 1                # bob's resync commit
        agree(alice, bob, group_id=gid)
        assert alice.groups[gid].members[bob_leaf].client_credential == bob.session.credential
        await alice.send(gid, b"welcome back")
        await bob.receive()
        assert bob.text_bodies(gid) == [b"welcome back"]
        await bob.send(gid, b"thanks")
        await alice.receive()
        assert alice.text_bodies(gid) == [b"thanks"]


@spec(RESYNC, "informative")
async def test_a_message_of_an_earlier_epoch_does_not_resync():
    async with Deployment("in_process", ["hs1"]) as d, d.client() as http:
        gid, alice, bob = await group_of_two(d, http)
        await alice.send(gid, b"sent before bob rejoined")
        await bob.resync(gid)                            # his new epoch cannot read what was queued before
        epoch = bob.groups[gid].group.epoch
        assert await bob.receive() == 1
        assert failures(bob, gid) == ["WrongEpoch"]
        assert not [e for e in bob.events if e[0] in ("resynced", "resync_failed")]
        assert bob.groups[gid].group.epoch == epoch


@spec("spec/delivery_service.md#message-distribution", "informative")
async def test_held_messages_go_on_after_an_unreadable_one(monkeypatch):
    async with Deployment("in_process", ["hs1"]) as d, d.client() as http:
        gid, alice, bob = await group_of_two(d, http)
        member = bob.groups[gid]
        request = member.update_request()
        await bob.ds(A, request.name, request.body)      # the DS applies bob's commit, ...
        member.unsure = request                          # ... whose answer bob never got
        assert await alice.receive() == 1
        await alice.send(gid, b"a")
        await send_raw(alice, gid, b"\xee no app payload")
        await alice.send(gid, b"c")

        async def unreachable(*args):
            raise httpx.ConnectError("the DS cannot be reached")
        with monkeypatch.context() as patch:
            patch.setattr(bob, "ds", unreachable)
            assert await bob.receive() == 3              # held back until the commit's fate is known
        assert len(member.held) == 3 and bob.text_bodies(gid) == []
        assert await bob.receive() == 0                  # the DS recognises the commit: held ones processed
        assert bob.groups[gid].unsure is None
        assert bob.text_bodies(gid) == [b"a", b"c"]
        assert failures(bob, gid) == ["DecodeError"]
        agree(alice, bob, group_id=gid)


async def _unreachable(*args):
    raise httpx.ConnectError("the DS cannot be reached")


async def invited_with_two_texts(d, http, **bob_kwargs):
    """Alice invites bob into a new group and sends two texts, none of them received yet."""
    gid, alice, bob = await invited(d, http, **bob_kwargs)
    await alice.send(gid, b"one")
    await alice.send(gid, b"two")
    return gid, alice, bob


def waiting_events(m):
    return [e[:2] for e in m.events if e[0] == "message_waiting"]


@spec("spec/queuing_service.md#dequeue-messages", "informative")
async def test_a_welcome_waits_for_the_ds_and_its_group_waits_behind_it(tmp_path, monkeypatch):
    """The DS's welcome information cannot be fetched: the Welcome and the
    group's later messages wait, across a restart, and are handled in order
    once the DS answers."""
    async with Deployment("in_process", ["hs1"]) as d, d.client() as http:
        gid, alice, bob = await invited_with_two_texts(d, http, state_dir=tmp_path / "bob")
        with monkeypatch.context() as patch:
            patch.setattr(bob, "ds", _unreachable)
            assert await bob.receive() == 3
            assert waiting_events(bob) == [("message_waiting", gid)]     # once, for the Welcome
            assert [w.group for w in bob.waiting] == [gid] * 3 and gid not in bob.groups
            assert await bob.receive() == 0                              # still unreachable: still waiting
            assert len(bob.waiting) == 3 and len(waiting_events(bob)) == 1
        assert not [e for e in bob.events if e[0] == "message_failed"]
        bob.close()
        again = Messenger.open(tmp_path / "bob", http, clock=d.clock)
        assert [w.group for w in again.waiting] == [gid] * 3
        assert await again.receive() == 0
        assert ("joined", gid) in again.events and again.waiting == []
        assert again.text_bodies(gid) == [b"one", b"two"]
        agree(alice, again, group_id=gid)
        again.close()


@spec("spec/queuing_service.md#dequeue-messages", "informative")
async def test_a_commit_waits_for_a_new_members_as_while_other_groups_go_on():
    """A commit adds a member of a domain whose AS is down: the commit and its
    group's next text wait; another group's text is read at once."""
    async with Deployment("in_process", ["hs1", "hs2"]) as d, d.client() as http:
        gid, alice, bob = await group_of_two(d, http)
        other = await alice.create_group()
        await alice.invite(other, [bob.user_id])
        assert await bob.receive() == 1
        carol = await Messenger.register(http, "b.example", clock=d.clock)
        carol.add_contact(alice.card())
        await carol.trust_domains(A)
        alice.add_contact(carol.card())
        await alice.trust_domains("b.example")
        await alice.invite(gid, [carol.user_id])
        await d.set_down("hs2")                         # bob has never fetched b.example's AS credentials
        await alice.send(gid, b"in the new epoch")
        await alice.send(other, b"elsewhere")
        assert await bob.receive() == 3
        assert waiting_events(bob) == [("message_waiting", gid)]
        assert [w.group for w in bob.waiting] == [gid, gid]
        assert bob.text_bodies(other) == [b"elsewhere"] and bob.text_bodies(gid) == []
        await d.set_up("hs2")
        assert await bob.receive() == 0
        assert bob.waiting == [] and bob.text_bodies(gid) == [b"in the new epoch"]
        assert not [e for e in bob.events if e[0] == "message_failed"]
        agree(alice, bob, group_id=gid)


@spec("spec/queuing_service.md#dequeue-messages", "informative")
async def test_a_message_that_waited_a_week_is_reported_failed(monkeypatch):
    from phoenix_ref.client.messenger import MAX_WAIT_MS
    async with Deployment("in_process", ["hs1"]) as d, d.client() as http:
        gid, alice, bob = await invited_with_two_texts(d, http)
        monkeypatch.setattr(bob, "ds", _unreachable)
        assert await bob.receive() == 3
        d.clock.advance(MAX_WAIT_MS - 1)
        assert await bob.receive() == 0 and len(bob.waiting) == 3
        d.clock.advance(1)
        assert await bob.receive() == 0
        gave_up = [e for e in bob.events if e[0] == "message_failed"]
        assert len(gave_up) == 1 and gave_up[0][1] == gid and "gave up" in gave_up[0][2]
        # the texts behind it belong to a group bob never joined: nothing to do with them
        assert bob.waiting == [] and gid not in bob.groups


def test_the_command_line_client_prints_events_with_and_without_a_reason(capsys):
    m = SimpleNamespace(events=[("resynced", "G1"), ("message_failed", None, "DecodeError: bad tag")],
                        texts={}, contacts={})
    assert _print_new(m, {"names": {"chat": "G1"}}, set(), 0) == 2
    assert capsys.readouterr().out.splitlines() == [
        "* missed a change and rejoined group chat",
        "* a message could not be read in group (group unknown): DecodeError: bad tag"]
