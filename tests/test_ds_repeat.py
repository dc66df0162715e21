"""A commit sent again by a client that lost the DS's answer
(docs/decisions.md, "A commit whose answer was lost"): the DS answers it as
applied and writes and sends nothing; the same bytes from another leaf, or
after the DS forgot the commit, are an ordinary ``409 wrong_epoch``."""

from __future__ import annotations

import pytest

from phoenix_ref.auth_tokens import DsLeafIndex
from phoenix_ref.client.groups import signed_request
from phoenix_ref.delivery import messages as m
from phoenix_ref.delivery.core import WrongEpoch
from phoenix_ref.delivery.group_state import RECENT_COMMITS
from phoenix_ref.spec_plugin import spec
from tests.test_ds_core import add_package, issuer, world  # noqa: F401  (fixtures)

DISTRIBUTION = "spec/delivery_service.md#message-distribution"


def again(world, member, request):
    """``request`` once more, as the client sends it after a lost answer."""
    handler = getattr(world.core, request.name.removeprefix("ds_"))
    return handler(member.resigned(request).body, world.rows[member.group_id], world.clock.now_ms())


@spec(DISTRIBUTION, "informative")
@spec("spec/delivery_service.md#validation", "informative")
def test_a_repeated_commit_is_answered_as_applied_and_sent_once(world):
    gid, alice = world.create()
    key, cred = world.client()
    package, info, fkey, bundle = add_package(world)
    add = alice.add_request([(package, info, fkey)], key, cred.client_id)
    assert world.call(alice, add).fan_outs                       # the Welcome went out once
    update = alice.update_request()
    assert len(world.call(alice, update).fan_outs) == 1          # the commit, to the joiner
    stored = world.rows[gid].sealed_state

    for request in (update, add):                                # both still remembered
        outcome = again(world, alice, request)
        assert outcome.response == m.Empty() and outcome.error is None
        assert outcome.fan_outs == [] and outcome.sealed_state is None
    assert world.rows[gid].sealed_state == stored

    joiner_leaf = 1                                              # the same bytes, another sender
    other = signed_request("ds_update_client", update.body.params, gid, bundle.signing_key,
                           DsLeafIndex(joiner_leaf), world.clock.now_ms())
    with pytest.raises(WrongEpoch):
        world.core.update_client(other.body, world.rows[gid], world.clock.now_ms())


@spec("spec/delivery_service.md#validation", "informative")
def test_a_commit_is_remembered_for_recent_commits_only(world):
    gid, alice = world.create()
    first = alice.update_request()
    world.call(alice, first)
    for _ in range(RECENT_COMMITS - 1):
        world.call(alice, alice.update_request())
    assert again(world, alice, first).response == m.Empty()      # the oldest one kept
    world.call(alice, alice.update_request())
    with pytest.raises(WrongEpoch):                              # forgotten: an ordinary stale commit
        again(world, alice, first)
