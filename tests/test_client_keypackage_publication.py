"""The client's side of ``spec/queuing_service/keypackage_publication.md``
and of connection groups (``spec/authentication_service/security_guarantees.md``).

These requirements are on clients: what a client puts into the AddPackages
it publishes, what its invitations reveal, when it declines an invitation
and what it does when it ends a connection. The tests run
:class:`~phoenix_ref.client.messenger.Messenger` against in-process
homeservers over (emulated) TLS and look at two things: what the clients
sent to and got from the QSs and DSs (recorded at the clients' HTTP layer,
so everything those services could learn from a client), and what the
other clients can do with it.
"""

from __future__ import annotations

import httpx
import pytest

from phoenix_ref.client.messenger import Messenger
from phoenix_ref.client.phoenix_credentials import (
    CredentialError, CredentialInformation, leaf_credential_of, new_symmetric_key, open_add_package, open_attribution,
)
from phoenix_ref.codec import decode, encode
from phoenix_ref.delivery import messages as dsm
from phoenix_ref.errors import Unauthorized
from phoenix_ref.queuing.messages import AddPackageParams, UserRecordParams
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment
from spec_tests.test_ds_groups import until

A, B = "a.example", "b.example"
KP = "spec/queuing_service/keypackage_publication.md#"


class Wire:
    """Every body a client sent to a QS or DS and every body it got back."""

    def __init__(self, http: httpx.AsyncClient):
        self.bodies: list[tuple[str, str, bytes]] = []      # (host, path, body)
        self.requests: list[tuple[str, bytes]] = []         # (path, body) of the requests alone
        http.event_hooks["request"].append(self._request)
        http.event_hooks["response"].append(self._response)

    @staticmethod
    def _watched(url: httpx.URL) -> bool:
        return url.host.split(".", 1)[0] in ("qs", "ds")

    async def _request(self, request: httpx.Request) -> None:
        if self._watched(request.url):
            self.bodies.append((request.url.host, request.url.path, bytes(request.content)))
            self.requests.append((request.url.path, bytes(request.content)))

    async def _response(self, response: httpx.Response) -> None:
        if self._watched(response.request.url):
            await response.aread()
            self.bodies.append((response.request.url.host, response.request.url.path, response.content))

    def sent(self, path_end: str) -> list[bytes]:
        return [b for p, b in self.requests if p.endswith(path_end)]

    def leaks(self, m: Messenger) -> list[tuple[str, str]]:
        """Where a body holds something that names ``m``'s user or client."""
        cred = m.session.credential
        marks = [m.user_id.user_id.bytes, str(m.user_id.user_id).encode(), m.client_id.client_uuid.bytes,
                 str(m.client_id.client_uuid).encode(), bytes(cred.public_key), encode(cred)]
        return [(h, p) for h, p, b in self.bodies if any(x in b for x in marks)]


async def register(d: Deployment, http, *domains: str) -> list[Messenger]:
    out = [await Messenger.register(http, dom, clock=d.clock) for dom in domains]
    for m in out:
        await m.trust_domains(A, B)
    return out


async def connect(initiator: Messenger, responder: Messenger):
    """A connection (connection group and swapped cards) between two users."""
    gid = await initiator.connect(responder.user_id)
    assert await responder.accept_connections() == [gid]
    await until(lambda: responder.user_id in initiator.contacts and initiator.user_id in responder.contacts,
                initiator, responder)
    return gid


def named(m: Messenger, gid) -> dict:
    """``m``'s authenticated view of group ``gid``: user id → client credential."""
    return {info.client_credential.client_id.user_id: info.client_credential
            for info in m.groups[gid].members.values()}


@spec(KP + "friendship-keys-and-credential-encryption", "MUST")
async def test_add_packages_keep_the_identity_from_the_qs_and_members_still_authenticate():
    async with Deployment("in_process", ["hs1", "hs2"]) as d, d.client() as http:
        wire = Wire(http)
        alice, bob, carol = await register(d, http, A, B, A)
        alice.add_contact(bob.card())           # carol never learns anything about bob
        bob.add_contact(alice.card())

        # what bob's QS got: AddPackages that name neither bob nor his client
        published = wire.sent("/publish_key_packages")
        assert published and not [w for w in wire.leaks(bob) if w[0] == f"qs.{B}"]
        answer = await alice.qs.call(B, "get_add_package", AddPackageParams(bob.me.friendship_token))
        packages = list(answer.add_packages)
        card = alice.contacts[bob.user_id]
        # ... but each opens, with bob's friendship key only, to bob's credential and
        # a leaf credential bob's client signed
        with pytest.raises(CredentialError):
            open_add_package(packages[0], new_symmetric_key(), alice.trust, alice.now())
        infos = [open_add_package(p, card.friendship_key, alice.trust, alice.now()) for p in packages]
        assert {i.client_credential.client_id for i in infos} == {bob.client_id}
        leaves = [leaf_credential_of(p.key_package.leaf_node) for p in packages]
        # leaf credential and signature encryption key are fresh for each AddPackage
        assert len({bytes(lc.identity) for lc in leaves}) == len(packages)
        assert len({bytes(lc.public_key) for lc in leaves}) == len(packages)
        assert len({bytes(i.signature_encryption_key) for i in infos}) == len(packages)

        # alice adds bob to a group with carol: carol, who has no card of bob,
        # authenticates him, and no DS or QS saw who was added
        gid = await alice.create_group()
        alice.add_contact(carol.card())
        carol.add_contact(alice.card())
        await alice.invite(gid, [carol.user_id])
        await until(lambda: gid in carol.groups, carol)
        before = len(wire.bodies)
        await alice.invite(gid, [bob.user_id])
        await until(lambda: gid in bob.groups and bob.user_id in named(carol, gid), bob, carol)
        assert named(carol, gid)[bob.user_id] == bob.session.credential
        assert named(bob, gid).keys() == {alice.user_id, bob.user_id, carol.user_id}
        wire.bodies[:before] = []
        assert wire.leaks(bob) == []


async def add_with_false_claim(sender, gid, added, claimed) -> None:
    """``sender`` adds a client of ``added`` to group ``gid`` (through its
    friendship token) but seals credential information that names
    ``claimed``'s client credential with the new leaf's key: a false claim
    every other member must refuse."""
    card = sender.contacts[added.user_id]
    answer = await sender.qs.call(card.user_id.as_domain, "get_add_package", AddPackageParams(card.friendship_token))
    package = answer.add_packages[0]
    real = open_add_package(package, card.friendship_key, sender.trust, sender.now())
    lie = CredentialInformation(claimed.session.credential, real.signature_encryption_key)
    member = sender.groups[gid]
    await sender._submit(member, member.add_request([(package, lie, card.friendship_key)],
                                                    sender.session.identity.signing_key, sender.client_id))


@spec(KP + "friendship-tokens-and-key-addpackage-publication", "MUST")
async def test_members_authenticate_a_joining_client_and_refuse_a_false_claim():
    async with Deployment("in_process", ["hs1", "hs2"]) as d, d.client() as http:
        alice, bob, carol, dave = await register(d, http, A, B, A, B)
        for m in (bob, carol, dave):
            alice.add_contact(m.card())
            m.add_contact(alice.card())
        gid = await alice.create_group()
        await alice.invite(gid, [carol.user_id])
        await until(lambda: gid in carol.groups, carol)
        # bob's client joins: carol, who never met bob, checks his leaf against his client credential
        await alice.invite(gid, [bob.user_id])
        await until(lambda: bob.user_id in named(carol, gid), carol)
        cred = named(carol, gid)[bob.user_id]
        assert cred == bob.session.credential and cred.client_id == bob.client_id

        # a member that claims dave's leaf belongs to bob's client is caught by every other member
        await add_with_false_claim(alice, gid, dave, bob)
        await carol.receive()                  # the commit is reported, not taken as bob's second client
        failed = [e[:2] + (e[2].split(":", 1)[0],) for e in carol.events if e[0] == "message_failed"]
        assert failed == [("message_failed", gid, CredentialError.__name__)]
        credentials = [info.client_credential for info in carol.groups[gid].members.values()]
        assert credentials.count(bob.session.credential) == 1


@spec(KP + "welcome-attribution", "MUST")
async def test_invitations_hide_the_inviter_from_the_ds_and_the_qs():
    async with Deployment("in_process", ["hs1", "hs2"]) as d, d.client() as http:
        alice, bob = await register(d, http, A, B)
        alice.add_contact(bob.card())
        bob.add_contact(alice.card())
        wire = Wire(http)                       # from here on: the group, the invitation, the join
        gid = await alice.create_group()
        await alice.invite(gid, [bob.user_id])
        await until(lambda: gid in bob.groups, bob)
        assert ("joined", gid) in bob.events
        assert wire.leaks(alice) == []
        assert any(p.endswith("/dequeue_messages") and h == f"qs.{B}" for h, p, _ in wire.bodies)
        # the attribution the DS forwarded names alice's client, for bob's friendship key only
        [add] = [decode(dsm.AddUsersRequest, b) for b in wire.sent("/ds_add_users")]
        [sealed] = add.params.welcome_attribution_info
        welcome = encode(add.params.welcome)
        payload, cred = open_attribution(bytes(sealed), bob.friendship_key, gid, welcome, bob._credential_of)
        assert payload.sender_client_id == alice.client_id and cred == alice.session.credential
        with pytest.raises(CredentialError):
            open_attribution(bytes(sealed), alice.friendship_key, gid, welcome, bob._credential_of)


@spec(KP + "friendship-token-rotation", "MUST")
async def test_removing_a_contact_rotates_the_friendship_token_and_tells_the_others():
    async with Deployment("in_process", ["hs1", "hs2"]) as d, d.client() as http:
        alice, bob, carol = await register(d, http, A, B, A)
        await connect(alice, bob)               # alice started this connection ...
        await connect(carol, alice)             # ... and carol this one
        old = alice.me.friendship_token
        assert bob.contacts[alice.user_id].friendship_token == old == carol.contacts[alice.user_id].friendship_token

        assert await alice.remove_contact(bob.user_id) == []
        new = alice.me.friendship_token
        assert new != old and bob.user_id not in alice.contacts
        record = await alice.qs.send(alice.me, "get_user_record", UserRecordParams(alice.me.qs_uid))
        assert record.friendship_token == new   # replaced on the QS
        # bob's copy of the old token no longer gets alice's AddPackages
        with pytest.raises(Unauthorized) as e:
            await bob.qs.call(A, "get_add_package", AddPackageParams(old))
        assert e.value.code == "unknown_friendship_token"
        bob_group = await bob.create_group()
        with pytest.raises(Unauthorized):
            await bob.invite(bob_group, [alice.user_id])

        # carol, who keeps the connection, got the new token and can still invite alice
        await until(lambda: carol.contacts[alice.user_id].friendship_token == new, carol)
        gid = await carol.create_group()
        await carol.invite(gid, [alice.user_id])
        await until(lambda: gid in alice.groups, alice)
        await bob.receive()
        assert bob.contacts[alice.user_id].friendship_token == old


@spec("spec/authentication_service/security_guarantees.md#connection-groups-and-multi-client-identity", "MUST")
async def test_an_invitation_from_a_client_outside_the_connection_group_is_declined():
    async with Deployment("in_process", ["hs1", "hs2"]) as d, d.client() as http:
        alice, bob, dave = await register(d, http, A, B, B)
        conn = await connect(alice, bob)
        first = await bob.create_group()
        await bob.invite(first, [alice.user_id])  # bob's client is in the connection group: alice joins
        await until(lambda: first in alice.groups, alice)

        # bob's client leaves the connection group; alice commits that
        await bob.leave(conn)
        await until(lambda: bool(alice.groups[conn].group.proposals), alice)
        await alice.update(conn)
        assert bob.user_id not in named(alice, conn)
        second = await bob.create_group()
        await bob.invite(second, [alice.user_id])
        await bob.send(first, b"after the invitation")
        # dave holds alice's card but is no contact of hers
        dave.add_contact(alice.card())
        third = await dave.create_group()
        await dave.invite(third, [alice.user_id])
        declined = [("declined", second), ("declined", third)]
        await until(lambda: alice.text_bodies(first) and all(e in alice.events for e in declined), alice)
        assert second not in alice.groups and third not in alice.groups
        assert alice.text_bodies(first) == [b"after the invitation"]   # the rest of the queue was read
