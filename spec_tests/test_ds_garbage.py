"""Garbage on every DS endpoint, with valid Privacy Pass tokens: never a 5xx.

``test_garbage_inputs.py`` fuzzes every row without a token, so the DS rows
stop at the 401 of the Privacy Pass check. Here a group of two (a.example,
b.example) exists, the client library builds a valid request for each DS
endpoint with a body (group creation, joins, resync and information
requests included), and the request is sent again with one defect: flipped bytes, a
cut, bytes appended, or a valid body of another endpoint — each with a
fresh token. The DS must answer 4xx with an ErrorResponse (or 200, when a
defect happens to leave a valid request), and the group must still work
afterwards.
"""

from __future__ import annotations

import random


from phoenix_ref import endpoints
from phoenix_ref import privacy_pass as pp
from phoenix_ref.codec import decode, encode
from phoenix_ref.auth_tokens import DsKeyPackageRef
from phoenix_ref.client.groups import GroupMember, PendingRequest, signed_request
from phoenix_ref.client.messenger import Messenger
from phoenix_ref.client.phoenix_credentials import CredentialInformation, new_leaf_identity, open_add_package
from phoenix_ref.config import Limits
from phoenix_ref.crypto import SigningKey
from phoenix_ref.delivery import messages as dsm
from phoenix_ref.errors import ErrorResponse
from phoenix_ref.http import MEDIA_TYPE
from phoenix_ref.queuing.messages import AddPackageParams
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment
from spec_tests.test_ds_groups import A, B, agree, trio_of_members, until

CASES = 12          # defective requests per endpoint and kind, per run


def mutations(body: bytes, rng: random.Random):
    for _ in range(CASES):
        b = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        yield "flip", bytes(b)
        yield "cut", body[:rng.randrange(len(body))]
        yield "append", body + rng.randbytes(rng.randint(1, 16))


async def joining_requests(d, http, alice, bob, gid) -> list[PendingRequest]:
    """Valid requests of the endpoints that create groups or bring clients
    in, built by the client library and not sent."""
    member = alice.groups[gid]
    out = []
    carol = await Messenger.register(http, B, clock=d.clock)      # someone to add
    await carol.trust_domains(A, B)
    alice.add_contact(carol.card())
    card = alice.contacts[carol.user_id]
    answer = await alice.qs.call(B, "get_add_package", AddPackageParams(card.friendship_token))
    package = answer.add_packages[0]
    info = open_add_package(package, card.friendship_key, alice.trust, alice.now())
    out.append(member.add_request([(package, info, card.friendship_key)], alice.session.identity.signing_key,
                                  alice.client_id))
    member.refused(out[-1])
    new_gid = await alice.request_group_id()                       # a group of one: create, join
    leaf = new_leaf_identity(alice.session.identity.signing_key, alice.session.credential, alice.now())
    lone = GroupMember.create(new_gid, leaf, alice.session.credential, await alice.ds_verifying_key(A), d.clock)
    out.append(lone.create_group_request(await alice._queue_config()))
    await alice.ds(A, out[-1].name, out[-1].body)
    ext = await bob.ds(A, "ds_external_commit_info", dsm.ExternalCommitInfoParams(new_gid, lone.ear_key))
    out.append(PendingRequest("ds_external_commit_info", dsm.ExternalCommitInfoParams(new_gid, lone.ear_key)))
    bob_leaf = new_leaf_identity(bob.session.identity.signing_key, bob.session.credential, bob.now())
    _, join = GroupMember.join_external(new_gid, ext, bob_leaf, CredentialInformation(
        bob.session.credential, bob_leaf.signature_encryption_key), lone.ear_key, lone.credential_key,
        await bob._queue_config(), bob.trust, d.clock)
    out.append(join)
    info = await bob.ds(A, "ds_external_commit_info", dsm.ExternalCommitInfoParams(gid, member.ear_key))
    _, resync = bob.groups[gid].resync(info, await bob._queue_config(), bob.trust)
    out.append(resync)
    out.append(signed_request("ds_welcome_info", dsm.WelcomeInfoParams(gid, member.ear_key, member.group.epoch),
                              gid, SigningKey.generate(), DsKeyPackageRef(bytes(32)), d.clock.now_ms()))
    return out


@spec("spec/delivery_service.md#validation", "informative")
@spec("threat_model.md#availability", "SHOULD")
async def test_defective_ds_requests_get_4xx(deployment_mode):
    rng = random.Random(1304)
    limits = Limits(token_allowance=1_000_000, token_batch_max=100)   # plenty (the walk's allowance too)
    async with Deployment(deployment_mode, ["hs1", "hs2"], limits=limits) as d, d.client() as http:
        gid, (alice, bob) = await trio_of_members(d, http, (A, B))
        member = alice.groups[gid]
        valid = [member.queue_info_request(await alice._queue_config()), member.update_request()]
        member.refused(valid[-1])
        valid.append(member.remove_request([alice.leaf_of(gid, bob.user_id)]))
        member.refused(valid[-1])
        valid.append(member.send_request(b"x"))
        valid.append(member.delete_request())
        member.refused(valid[-1])
        valid.append(member.self_remove_request())
        member.group.proposals.clear()
        valid += await joining_requests(d, http, alice, bob, gid)
        seen = set()
        statuses: dict[str, set[int]] = {}
        for request in valid:
            ep = endpoints.by_name("ds", request.name)
            seen.add(ep.name)
            body = encode(request.body)
            others = [encode(r.body) for r in valid if r.name != request.name]
            cases = list(mutations(body, rng)) + [("other", o) for o in others]
            for kind, data in cases:
                token = await alice.session.token(A)
                resp = await http.post(f"https://ds.{A}{ep.path}", content=data,
                                       headers={"Content-Type": MEDIA_TYPE,
                                                "Authorization": pp.authorization_header(token)})
                assert resp.status_code < 500, (ep.name, kind, resp.status_code, resp.content[:200])
                if resp.status_code != 200:
                    decode(ErrorResponse, resp.content)
                statuses.setdefault(ep.name, set()).add(resp.status_code)
        assert seen == {ep.name for ep in endpoints.ENDPOINTS if ep.service == "ds" and ep.request is not None}
        assert all(s - {200} for s in statuses.values()), statuses
        # the group survived all of it
        await alice.commit_with_retry(gid, lambda: alice.update(gid))
        await until(lambda: bob.groups[gid].group.epoch == alice.groups[gid].group.epoch, bob)
        agree(alice, bob, group_id=gid)
