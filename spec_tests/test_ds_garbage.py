"""Garbage on every DS endpoint, with valid Privacy Pass tokens: never a 5xx.

``test_garbage_inputs.py`` fuzzes every row without a token, so the DS rows
stop at the 401 of the Privacy Pass check. Here a group of two (a.example,
b.example) exists, the client library builds a valid request for each DS
endpoint, and the request is sent again with one defect: flipped bytes, a
cut, bytes appended, or a valid body of another endpoint — each with a
fresh token. The DS must answer 4xx with an ErrorResponse (or 200, when a
defect happens to leave a valid request), and the group must still work
afterwards.
"""

from __future__ import annotations

import random

import trio

from phoenix_ref import endpoints
from phoenix_ref import privacy_pass as pp
from phoenix_ref.codec import decode, encode
from phoenix_ref.config import Limits
from phoenix_ref.errors import ErrorResponse
from phoenix_ref.http import MEDIA_TYPE
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment
from spec_tests.test_ds_groups import A, B, agree, trio_of_members, until

CASES = 25          # defective requests per endpoint and kind, per run


def mutations(body: bytes, rng: random.Random):
    for _ in range(CASES):
        b = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        yield "flip", bytes(b)
        yield "cut", body[:rng.randrange(len(body))]
        yield "append", body + rng.randbytes(rng.randint(1, 16))


@spec("spec/delivery_service.md#validation", "informative")
@spec("threat_model.md#availability", "SHOULD")
async def test_defective_ds_requests_get_4xx(deployment_mode):
    rng = random.Random(1304)
    limits = Limits(token_allowance=100_000, token_batch_max=100)
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
        assert seen == {"ds_update_queue_info", "ds_update_client", "ds_remove_users", "ds_send_message",
                        "ds_delete_group", "ds_self_remove_user"}
        assert all(s - {200} for s in statuses.values()), statuses
        # the group survived all of it
        await alice.commit_with_retry(gid, lambda: alice.update(gid))
        await until(lambda: bob.groups[gid].group.epoch == alice.groups[gid].group.epoch, bob)
        agree(alice, bob, group_id=gid)
