"""A member's MLS state saved and restored (:mod:`phoenix_ref.mls.group_state`):
the restored member continues exactly where the saved one stood — it agrees
with a twin that was never saved, after the same inputs, byte for byte."""

from dataclasses import replace

import pytest

from phoenix_ref.codec import decode, encode
from phoenix_ref.mls.group import ApplicationMessage, CommitMessage, Group, GroupInactive
from phoenix_ref.mls.group_state import GroupState, GroupStateError
from phoenix_ref.mls.messages import ResumptionPSKUsage
from phoenix_ref.mls.psk import external_psk_id, resumption_psk_id
from phoenix_ref.mls.secret_tree import GenerationUnavailable
from tests.test_mls_group import assert_agree, commit_and_deliver, member, new_group


def saved(g: Group) -> Group:
    return Group.from_bytes(g.to_bytes())


def test_the_saved_form_is_stable_and_complete():
    groups = new_group(3)
    for g in groups:
        assert saved(g).to_bytes() == g.to_bytes()
        assert saved(g).epoch_authenticator == g.epoch_authenticator
    assert_agree([saved(g) for g in groups])


def test_a_restored_member_and_its_never_saved_twin_take_the_same_inputs_alike():
    groups = new_group(4)
    twin, restored = groups[1], saved(groups[1])
    inputs = [groups[0].encrypt(b"one"), groups[2].encrypt(b"two"), groups[0].propose_update()]
    groups[2].process(inputs[-1])
    groups[3].process(inputs[-1])
    res = groups[0].commit()
    groups[0].merge_pending_commit()
    for g in (groups[2], groups[3]):
        g.process(res.message)
    inputs += [res.message, groups[3].encrypt(b"three")]
    for msg in inputs:
        a, b = twin.process(msg), restored.process(msg)
        assert type(a) is type(b)
        if isinstance(a, ApplicationMessage):
            assert a == b
        assert twin.to_bytes() == restored.to_bytes()
    assert twin.epoch_authenticator == restored.epoch_authenticator == groups[0].epoch_authenticator


def test_a_restored_sender_does_not_reuse_a_generation():
    groups = new_group(2)
    for i in range(3):
        groups[1].process(groups[0].encrypt(b"m%d" % i))
    again = saved(groups[0])      # without the ratchet positions this would start at generation 0
    assert groups[1].process(again.encrypt(b"after restart")).data == b"after restart"


def test_skipped_keys_survive_a_restart():
    groups = new_group(2)
    early = [groups[0].encrypt(b"early %d" % i) for i in range(2)]
    groups[1].process(groups[0].encrypt(b"late"))       # generations 0 and 1 skipped, keys kept
    receiver = saved(groups[1])
    assert [receiver.process(m).data for m in early] == [b"early 0", b"early 1"]
    with pytest.raises(GenerationUnavailable):           # and each is still served once
        receiver.process(early[0])


def test_stored_proposals_and_pending_update_keys_survive_a_restart():
    groups = new_group(3)
    update = groups[1].propose_update()
    groups[0].process(update)
    groups[2].process(update)
    before = groups[0].tree.leaf(1)
    groups[0] = saved(groups[0])     # commits the stored proposal by reference
    groups[1] = saved(groups[1])     # needs the private key of its proposed leaf
    assert len(groups[0].proposals) == len(groups[1].proposals) == 1
    res, out = commit_and_deliver(groups, groups[0])
    assert all(isinstance(o, CommitMessage) for o in out)
    assert out[0].applied.updated == out[1].applied.updated == [1]
    assert groups[1].tree.leaf(1) == groups[0].tree.leaf(1) != before
    assert_agree(groups)
    commit_and_deliver(groups, groups[2])      # the updated leaf decrypts a path secret
    assert_agree(groups)


def test_resumption_and_external_psks_survive_a_restart():
    psk_id = b"shared"
    groups = new_group(2, external_psks={psk_id: b"s" * 32})
    groups[1].external_psks[psk_id] = b"s" * 32
    old_epoch = groups[0].epoch
    commit_and_deliver(groups, groups[0])
    groups = [saved(g) for g in groups]
    pids = [resumption_psk_id(ResumptionPSKUsage.application, groups[0].group_id, old_epoch),
            external_psk_id(psk_id)]
    for pid in pids:
        groups[1].process(groups[0].propose_psk(pid))
    res = groups[0].commit()
    groups[0].merge_pending_commit()
    assert len(groups[1].process(res.message).applied.psk_ids) == 2
    assert_agree(groups)


def test_a_committer_restored_after_the_ds_accepted_continues_the_new_epoch():
    groups = new_group(3)
    res = groups[0].commit()
    pending = groups[0].to_bytes()
    groups[0].merge_pending_commit()
    groups[0] = saved(groups[0])
    for g in groups[1:]:
        g.process(res.message)
    assert_agree(groups)
    # a pending commit is not part of the saved state: the restored member has none
    assert Group.from_bytes(pending).epoch == groups[0].epoch - 1
    with pytest.raises(Exception, match="no pending Commit"):
        Group.from_bytes(pending).merge_pending_commit()


def test_a_removed_member_stays_removed():
    groups = new_group(3)
    commit_and_deliver(groups, groups[0], removes=[2])
    with pytest.raises(GroupInactive):
        saved(groups[2]).encrypt(b"still here?")


def test_broken_saved_state_is_refused():
    g = new_group(2)[0]
    data = g.to_bytes()
    with pytest.raises(GroupStateError, match="format"):
        Group.from_bytes(b"\x02" + data[1:])
    with pytest.raises(GroupStateError, match="decode"):
        Group.from_bytes(data + b"\x00")
    state, other = decode(GroupState, data), decode(GroupState, new_group(2)[0].to_bytes())
    with pytest.raises(GroupStateError, match="private keys"):
        Group.from_bytes(encode(replace(state, tree_keys=other.tree_keys)))
    with pytest.raises(GroupStateError, match="tree"):
        Group.from_bytes(encode(replace(state, ratchet_tree=other.ratchet_tree)))


def test_a_creator_restored_before_registering_keeps_its_key_package():
    sk, cred = member(b"solo")
    g = Group.create(sk, cred)
    assert saved(g).creator_key_package == g.creator_key_package
