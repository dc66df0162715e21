"""Only clients of a homeserver create groups on its DS, black-box: HTTPS
through the client library only.

``spec/federation/use_cases.md#message-distribution``: the DS makes all of
its endpoints publicly available "except for the ``CreateGroup`` and the
``RequestGroupId`` endpoints, as we only allow local clients to create
groups on a given DS"; ``threat_model/stride/security_requirements/clients.md#group-creation``:
"Only clients of local users can create new groups" while "the homeserver
must not learn the identity of the group creator".

How phoenix_ref tells them apart without learning who calls
(docs/decisions.md, A21): the AS issues tokens to its own clients under a
local issuer key and to clients of other homeservers under a separate
federated key (its directory lists both); these two DS endpoints refuse a
valid token of the federated key with 403 ``local_clients_only`` and leave
it unspent.
"""

from __future__ import annotations

import pytest

from phoenix_ref import endpoints
from phoenix_ref.authentication import messages as m
from phoenix_ref.client.calls import call_endpoint
from phoenix_ref.client.groups import GroupMember
from phoenix_ref.client.phoenix_credentials import new_leaf_identity
from phoenix_ref.codec import decode
from phoenix_ref.errors import ProtocolError
from phoenix_ref.privacy_pass_gate import IssuerKeysResponse
from phoenix_ref.spec_plugin import spec
from spec_tests.test_ds_groups import A, B, until, users

LOCAL_ONLY = "spec/federation/use_cases.md#message-distribution"
GROUP_CREATION = "threat_model/stride/security_requirements/clients.md#group-creation"


async def refused(awaitable, status: int, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        await awaitable
    assert (info.value.status, info.value.code) == (status, code), str(info.value)


def this_token(token):
    """A Privacy Pass source for :func:`call_endpoint` that always presents ``token``."""
    async def source(_domain):
        return token
    return source


async def ds_call(http, name: str, body, token) -> object:
    """DS endpoint ``name`` of a.example with exactly ``token``."""
    return await call_endpoint(http, f"https://ds.{A}", endpoints.by_name("ds", name), A, body, this_token(token))


@spec(LOCAL_ONLY, "informative")
@spec(GROUP_CREATION, "MUST")
async def test_a_client_of_another_homeserver_cannot_create_a_group_here(deployment):
    d = deployment
    async with d.client() as http:
        alice, bob = await users(d, http, A, B)
        # the directory names two disjoint key sets: one for a.example's clients, one for the others
        resp = await http.get(f"https://as.{A}/phoenix/v1/privacy_pass_issuer_keys")
        assert resp.status_code == 200
        directory = decode(IssuerKeysResponse, resp.content)
        local = {k.token_key for k in directory.token_keys}
        federated = {k.token_key for k in directory.federated_token_keys}
        assert local and federated and not local & federated

        # a placeholder of Alice's; Bob (b.example) holds a token of a.example's AS
        gid = (await alice.ds(A, "ds_request_group_id")).group_id
        token = await bob.session.token(A)
        await refused(ds_call(http, "ds_request_group_id", None, token), 403, "local_clients_only")
        # a well-formed create group for that placeholder, with Bob as its only member
        leaf = new_leaf_identity(bob.session.identity.signing_key, bob.session.credential, bob.now())
        member = GroupMember.create(gid, leaf, bob.session.credential, await bob.ds_verifying_key(A),
                                    bob.session.clock)
        request = member.create_group_request(await bob._queue_config())
        await refused(ds_call(http, request.name, request.body, token), 403, "local_clients_only")

        # the refusals spent nothing: a.example's AS takes the token once for a federated endpoint
        profile = m.UserProfileParams(alice.user_id)
        await bob.session.as_client.call(A, "user_profile", profile, privacy_pass=token)
        await refused(bob.session.as_client.call(A, "user_profile", profile, privacy_pass=token),
                      401, "token_spent")

        # the placeholder survived Bob's attempt: Alice, with local tokens, creates her group on it
        mine = GroupMember.create(gid, new_leaf_identity(alice.session.identity.signing_key,
                                                         alice.session.credential, alice.now()),
                                  alice.session.credential, await alice.ds_verifying_key(A), alice.session.clock)
        await alice._submit(mine, mine.create_group_request(await alice._queue_config()))
        alice.groups[gid] = mine

        # Bob, invited, uses a.example's DS with his federated tokens
        await alice.invite(gid, [bob.user_id])
        await until(lambda: gid in bob.groups, bob)
        await bob.send(gid, b"hi alice")
        await until(lambda: alice.text_bodies(gid), alice)
        assert alice.text_bodies(gid) == [b"hi alice"]

        # and Bob creates groups on his own homeserver's DS
        assert str((await bob.create_group()).ds_domain) == B


@spec(LOCAL_ONLY, "informative")
async def test_a_local_token_is_spent_once_at_the_local_only_endpoints(deployment):
    d = deployment
    async with d.client() as http:
        [alice] = await users(d, http, A)
        token = await alice.session.token(A)
        gid = (await ds_call(http, "ds_request_group_id", None, token)).group_id
        assert str(gid.ds_domain) == A
        await refused(ds_call(http, "ds_request_group_id", None, token), 401, "token_spent")
        assert str((await alice.create_group()).ds_domain) == A
