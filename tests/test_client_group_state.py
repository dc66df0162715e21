"""A member's group state stays whole: a commit the client refuses is not
half applied, a malformed external commit is an unprocessable message
rather than a crash, and a commit whose DS answer was lost survives a
restart of the client (:mod:`phoenix_ref.client.groups`,
:mod:`phoenix_ref.client.saved`).

The clients run :class:`~phoenix_ref.client.messenger.Messenger` against
in-process homeservers over emulated TLS.
"""

from __future__ import annotations

import httpx
import pytest

from phoenix_ref.client.messenger import Messenger
from phoenix_ref.client.phoenix_credentials import CredentialError, new_leaf_identity
from phoenix_ref.codec import encode
from phoenix_ref.delivery import messages as dsm
from phoenix_ref.mls.group import Group
from phoenix_ref.queuing.messages import AddPackageParams, CommitContent
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment
from spec_tests.test_ds_groups import agree, until, users
from tests.test_client_keypackage_publication import add_with_false_claim

A = "a.example"
DS = "spec/delivery_service.md#"
KP = "spec/queuing_service/keypackage_publication.md#"


def failures(m, gid):
    """``m``'s message_failed events for ``gid``, as the error class names."""
    return [e[2].split(":", 1)[0] for e in m.events if e[0] == "message_failed" and e[1] == gid]


def snapshot(m, gid):
    """What a member's view of a group is made of, to compare before and after."""
    member = m.groups[gid]
    return (member.group.epoch, member.group.epoch_authenticator, member.group.tree.tree_hash(),
            dict(member.members))


@spec(KP + "friendship-tokens-and-key-addpackage-publication", "MUST")
@spec(DS + "resync", "informative")
async def test_a_commit_refused_for_a_false_claim_leaves_the_group_as_it_was():
    async with Deployment("in_process", ["hs1"]) as d, d.client() as http:
        alice, bob, carol, dave = await users(d, http, A, A, A, A)
        gid = await alice.create_group()
        await alice.invite(gid, [carol.user_id])
        await until(lambda: gid in carol.groups, carol)
        before = snapshot(carol, gid)
        # alice adds dave's client but claims it is bob's: carol must refuse the whole commit
        await add_with_false_claim(alice, gid, dave, bob)
        assert await carol.receive() == 1
        assert failures(carol, gid) == ["CredentialError"]
        assert snapshot(carol, gid) == before                # not in the new epoch, nothing learned
        # the group's next message shows carol is behind; her resync meets the same false claim
        await alice.send(gid, b"in the epoch carol refused")
        assert await carol.receive() == 1
        assert failures(carol, gid) == ["CredentialError", "WrongEpoch"]
        [(kind, _, reason)] = [e for e in carol.events if e[0] in ("resynced", "resync_failed")]
        assert kind == "resync_failed" and reason.startswith("CredentialError")
        assert snapshot(carol, gid) == before and carol.text_bodies(gid) == []


@spec(KP + "friendship-keys-and-credential-encryption", "MUST")
@spec(DS + "join-connection-group", "informative")
async def test_the_joiner_of_an_external_commit_is_its_committer():
    """The joining client's leaf is the one the commit names, not whichever
    leaf our view lacks information for: a view that already holds an entry
    for that leaf (here a stale one, put there by hand) still learns the
    joiner's credential there."""
    async with Deployment("in_process", ["hs1"]) as d, d.client() as http:
        alice, bob = await users(d, http, A, A)
        gid = await alice.connect(bob.user_id)
        member = alice.groups[gid]
        stale = member.members[member.group.leaf_index]
        member.members[member.group.tree.free_leaf_index()] = stale
        assert await bob.accept_connections() == [gid]
        await alice.receive()                              # bob's external commit, then his card
        assert failures(alice, gid) == []
        bob_leaf = bob.groups[gid].group.leaf_index
        assert alice.groups[gid].members[bob_leaf].client_credential == bob.session.credential
        assert bob.user_id in alice.contacts
        agree(alice, bob, group_id=gid)


@spec(KP + "friendship-keys-and-credential-encryption", "MUST")
@spec(DS + "join-connection-group", "informative")
async def test_an_external_commit_without_credential_information_is_unprocessable():
    """An external commit that neither carries the joiner's credential
    information nor resyncs a leaf would leave an unauthenticated member: it
    is reported as a failed message and the group is unchanged (it is handed
    to the client directly: the DS would not take it)."""
    async with Deployment("in_process", ["hs1"]) as d, d.client() as http:
        alice, bob, dave = await users(d, http, A, A, A)
        gid = await alice.create_group()
        await alice.invite(gid, [bob.user_id])
        await until(lambda: gid in bob.groups, bob)
        group = alice.groups[gid].group
        leaf = new_leaf_identity(dave.session.identity.signing_key, dave.session.credential, dave.now())
        _, commit = Group.join_by_external_commit(group.group_info(), leaf.signing_key, leaf.mls_credential,
                                                  ratchet_tree=group.tree, clock=d.clock)
        before = snapshot(bob, gid)
        await bob._process_all([CommitContent(commit)], set())
        assert failures(bob, gid) == [CredentialError.__name__]
        assert snapshot(bob, gid) == before



@spec(KP + "friendship-keys-and-credential-encryption", "MUST")
async def test_an_add_without_credential_information_for_every_new_member_is_unprocessable():
    """An add commit whose AAD has fewer sealed credential informations than
    it has Adds would leave a new member unauthenticated (handed to the
    client directly, as the DS would not take it)."""
    async with Deployment("in_process", ["hs1"]) as d, d.client() as http:
        alice, bob, dave = await users(d, http, A, A, A)
        gid = await alice.create_group()
        await alice.invite(gid, [bob.user_id])
        await until(lambda: gid in bob.groups, bob)
        card = alice.contacts[dave.user_id]
        answer = await alice.qs.call(A, "get_add_package", AddPackageParams(card.friendship_token))
        result = alice.groups[gid].group.commit(adds=[answer.add_packages[0].key_package],
                                                authenticated_data=encode(dsm.AddUsersParamsAad([])))
        before = snapshot(bob, gid)
        await bob._process_all([CommitContent(result.message)], set())
        assert failures(bob, gid) == [CredentialError.__name__]
        assert snapshot(bob, gid) == before

async def member_with_state(d, http, tmp_path):
    """Alice's group with bob, whose state is kept in ``tmp_path``."""
    alice, = await users(d, http, A)
    bob = await Messenger.register(http, A, clock=d.clock, state_dir=tmp_path / "bob")
    alice.add_contact(bob.card())
    bob.add_contact(alice.card())
    await bob.trust_domains(A)
    gid = await alice.create_group()
    await alice.invite(gid, [bob.user_id])
    await until(lambda: gid in bob.groups, bob)
    return gid, alice, bob


def answer_lost(monkeypatch, m, *, delivered: bool):
    """``m``'s DS calls get no answer; ``delivered``: the DS still gets them."""
    real = m.ds

    async def lost(*args):
        if delivered:
            await real(*args)
        raise httpx.ReadError("the answer never came")
    monkeypatch.setattr(m, "ds", lost)


async def update_with_answer_lost(monkeypatch, m, gid, *, delivered: bool) -> None:
    """``m`` commits an update whose DS answer never comes (``delivered``:
    the DS got and applied it all the same)."""
    with monkeypatch.context() as patch, pytest.raises(httpx.ReadError):
        answer_lost(patch, m, delivered=delivered)
        await m.update(gid)


async def held_over_a_restart(monkeypatch, tmp_path, http, d, alice, bob, gid, queued: int):
    """Alice sends two texts; bob dequeues his ``queued`` messages while his
    DS is out of reach, then restarts."""
    await alice.send(gid, b"a")
    await alice.send(gid, b"b")
    with monkeypatch.context() as patch:
        answer_lost(patch, bob, delivered=False)
        assert await bob.receive() == queued               # dequeued, held back: gone from the QS
    bob.close()
    again = Messenger.open(tmp_path / "bob", http, clock=d.clock)
    member = again.groups[gid]
    assert member.unsure is not None and member.group.pending_commit is not None
    assert len(member.held) == queued and again.text_bodies(gid) == []
    return again


@spec(DS + "message-distribution", "informative")
@spec("spec/clients/creation.md#qs-registration", "informative")
async def test_an_applied_commit_whose_answer_was_lost_is_settled_after_a_restart(tmp_path, monkeypatch):
    async with Deployment("in_process", ["hs1"]) as d, d.client() as http:
        gid, alice, bob = await member_with_state(d, http, tmp_path)
        await update_with_answer_lost(monkeypatch, bob, gid, delivered=True)   # the DS applies bob's commit
        assert await alice.receive() == 1
        again = await held_over_a_restart(monkeypatch, tmp_path, http, d, alice, bob, gid, 2)
        assert await again.receive() == 0                  # the DS recognises the commit: held ones read
        assert again.groups[gid].unsure is None and again.text_bodies(gid) == [b"a", b"b"]
        assert not [e for e in again.events if e[0] in ("message_failed", "resynced", "commit_refused")]
        agree(alice, again, group_id=gid)
        await again.send(gid, b"back")
        await alice.receive()
        assert alice.text_bodies(gid) == [b"back"]
        again.close()


@spec(DS + "message-distribution", "informative")
@spec("spec/clients/creation.md#qs-registration", "informative")
async def test_a_lost_commit_that_lost_to_another_is_dropped_after_a_restart(tmp_path, monkeypatch):
    async with Deployment("in_process", ["hs1"]) as d, d.client() as http:
        gid, alice, bob = await member_with_state(d, http, tmp_path)
        await update_with_answer_lost(monkeypatch, bob, gid, delivered=False)  # bob's commit never reaches the DS ...
        await alice.update(gid)                            # ... and alice's takes the epoch
        again = await held_over_a_restart(monkeypatch, tmp_path, http, d, alice, bob, gid, 3)
        assert await again.receive() == 0
        assert ("commit_refused", gid) in again.events
        assert again.groups[gid].unsure is None and again.text_bodies(gid) == [b"a", b"b"]
        agree(alice, again, group_id=gid)
        again.close()


def as_format_1(state_dir):
    """Rewrite a saved state as format 1 wrote it: account version 1, group
    rows without the unsure commit and the held messages."""
    import sqlite3

    from phoenix_ref.client import saved as sv
    from phoenix_ref.codec import decode
    db = sqlite3.connect(state_dir / "client.sqlite3")
    with db:
        (account,), = db.execute("SELECT value FROM meta WHERE key = 'account'")
        old = decode(sv.SavedAccount, bytes(account))
        db.execute("UPDATE meta SET value = ? WHERE key = 'account'",
                   (encode(sv.SavedAccount(1, *[getattr(old, f) for f in list(old.__dataclass_fields__)[1:]])),))
        for gid, row in db.execute("SELECT group_id, member FROM groups").fetchall():
            new = decode(sv.SavedMember, bytes(row))
            assert new.unsure is None and not new.held
            v1 = sv.SavedMemberV1(new.group_id, new.group, new.leaf, new.ear_key, new.credential_key, new.members)
            db.execute("UPDATE groups SET member = ? WHERE group_id = ?", (encode(v1), gid))
    db.close()


@spec("spec/clients/creation.md#qs-registration", "informative")
async def test_a_state_directory_of_format_1_is_read_and_written_back_as_format_2(tmp_path):
    from phoenix_ref.client import saved as sv
    from phoenix_ref.codec import decode
    async with Deployment("in_process", ["hs1"]) as d, d.client() as http:
        gid, alice, bob = await member_with_state(d, http, tmp_path)
        before = snapshot(bob, gid)
        bob.close()
        as_format_1(tmp_path / "bob")
        again = Messenger.open(tmp_path / "bob", http, clock=d.clock)
        assert snapshot(again, gid) == before and again.groups[gid].unsure is None
        await alice.send(gid, b"still here")
        assert await again.receive() == 1 and again.text_bodies(gid) == [b"still here"]
        again.close()                                      # receive wrote the state back
        third = Messenger.open(tmp_path / "bob", http, clock=d.clock)
        assert decode(sv.SavedAccount, third.store.account()).version == sv.ACCOUNT_VERSION == 2
        third.close()
