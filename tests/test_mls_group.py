"""The member view (RFC 9420 §11, §12, §15) with groups of our own:
creation, Welcome joins, commits with and without UpdatePath, proposals by
value and by reference, PSKs, GroupContextExtensions, external proposals and
external commits, application messages, exporter and epoch authenticator."""

import pytest

from phoenix_ref.crypto import SigningKey, random_bytes
from phoenix_ref.mls.commit import PathRequired, ProposalNotAllowed
from phoenix_ref.mls.extensions import ExternalSender, ExternalSenders, RolesExtension, to_extension
from phoenix_ref.mls.framing import build_content, authenticate, protect_public
from phoenix_ref.mls.group import (
    ApplicationMessage, CommitMessage, Group, GroupInactive, PendingProposals, ProposalMessage,
)
from phoenix_ref.mls.messages import (
    Credential, MLSMessage, Remove, ResumptionPSKUsage, Sender, WireFormat,
)
from phoenix_ref.mls.psk import external_psk_id, resumption_psk_id


def member(name: bytes):
    sk = SigningKey.generate()
    return sk, Credential.basic(name)


def new_group(n: int, **kw):
    """A group of ``n`` members built by one Commit from member 0."""
    sk, cred = member(b"m0")
    g = Group.create(sk, cred, **kw)
    bundles = [Group.make_key_package(*member(b"m%d" % i)) for i in range(1, n)]
    groups = [g]
    if bundles:
        res = g.commit(adds=[b.key_package for b in bundles])
        g.merge_pending_commit()
        groups += [Group.join_from_welcome(res.welcome, b) for b in bundles]
    return groups


def assert_agree(groups):
    active = [g for g in groups if g.active]
    assert len({g.epoch for g in active}) == 1
    assert len({g.epoch_authenticator for g in active}) == 1
    assert len({g.tree.tree_hash() for g in active}) == 1
    assert len({g.export_secret("test", b"ctx", 32) for g in active}) == 1


def commit_and_deliver(groups, committer, **kw):
    res = committer.commit(**kw)
    committer.merge_pending_commit()
    out = [g.process(res.message) for g in groups if g is not committer and g.active]
    return res, out


def test_create_add_and_welcome():
    groups = new_group(4)
    assert [g.leaf_index for g in groups] == [0, 1, 2, 3]
    assert groups[0].epoch == 1
    assert_agree(groups)


def test_commit_with_and_without_path():
    groups = new_group(3)
    _, out = commit_and_deliver(groups, groups[1])  # empty commit: path required, included
    assert all(isinstance(o, CommitMessage) for o in out)
    assert_agree(groups)
    b = Group.make_key_package(*member(b"new"))
    res = groups[2].commit(adds=[b.key_package], path=False)
    assert res.message.public_message.content.commit.path is None
    groups[2].merge_pending_commit()
    for g in groups[:2]:
        g.process(res.message)
    groups.append(Group.join_from_welcome(res.welcome, b))
    assert_agree(groups)
    with pytest.raises(PathRequired):
        # a Remove requires a path: forge the receiver's side with a path-less commit
        groups[0].commit(removes=[1], path=False)


def test_remove_and_removed_member_goes_inactive():
    groups = new_group(4)
    _, out = commit_and_deliver(groups, groups[0], removes=[2])
    assert out[1].removed_me and not groups[2].active
    with pytest.raises(GroupInactive):
        groups[2].encrypt(b"hi")
    assert_agree([g for g in groups if g.active])
    assert groups[0].tree.leaf(2) is None


def test_update_proposal_by_reference_and_private_messages():
    groups = new_group(3)
    prop = groups[1].propose_update(private=True)
    for g in (groups[0], groups[2]):
        assert isinstance(g.process(prop), ProposalMessage)
    with pytest.raises(PendingProposals):
        groups[0].encrypt(b"not yet")
    res, _ = commit_and_deliver(groups, groups[0], private=True)
    assert res.message.wire_format == WireFormat.mls_private_message
    assert groups[1].tree.leaf(1) == groups[0].tree.leaf(1)
    assert_agree(groups)
    # the updater's new leaf key works: it decrypts the next path commit
    commit_and_deliver(groups, groups[2])
    assert_agree(groups)


def test_application_messages_all_directions():
    groups = new_group(3)
    for s in groups:
        msg = s.encrypt(b"hello from %d" % s.leaf_index, authenticated_data=b"aad")
        for r in groups:
            if r is not s:
                out = r.process(msg)
                assert out == ApplicationMessage(s.leaf_index, b"hello from %d" % s.leaf_index, b"aad")


def test_psk_and_group_context_extensions():
    psk_id, psk = b"shared-psk", random_bytes(32)
    groups = new_group(3)
    for g in groups:
        g.external_psks[psk_id] = psk
    pid = external_psk_id(psk_id)
    roles = to_extension(RolesExtension([0], [1, 2]))
    prop = groups[2].propose_psk(pid)
    for g in groups[:2]:
        g.process(prop)
    from phoenix_ref.mls.messages import GroupContextExtensions
    commit_and_deliver(groups, groups[0], proposals=[GroupContextExtensions([roles])])
    assert_agree(groups)
    assert groups[1].group_context.extensions == [roles]
    # a resumption PSK of the previous epoch
    rid = resumption_psk_id(ResumptionPSKUsage.application, groups[0].group_id, groups[0].epoch - 1)
    from phoenix_ref.mls.messages import PreSharedKey
    commit_and_deliver(groups, groups[1], proposals=[PreSharedKey(rid)])
    assert_agree(groups)


def test_external_sender_remove_proposal():
    ds = SigningKey.generate()
    ext = to_extension(ExternalSenders([ExternalSender(ds.public, Credential.basic(b"ds"))]))
    groups = new_group(3, extensions=[ext])
    ctx = groups[0].group_context
    fc = build_content(ctx.group_id, ctx.epoch, Sender.external(0), Remove(2))
    msg = MLSMessage.wrap(protect_public(authenticate(ds, WireFormat.mls_public_message, fc, None), ctx, None))
    for g in groups:
        assert isinstance(g.process(msg), ProposalMessage)
    commit_and_deliver(groups, groups[1])
    assert not groups[2].active
    assert_agree(groups)
    # sender index outside external_senders
    fc = build_content(ctx.group_id, groups[0].epoch, Sender.external(1), Remove(0))
    bad = MLSMessage.wrap(protect_public(authenticate(ds, WireFormat.mls_public_message, fc, None),
                                         groups[0].group_context, None))
    with pytest.raises(ProposalNotAllowed):
        groups[0].process(bad)


def test_external_commit_join_and_resync():
    groups = new_group(3)
    gi = groups[0].group_info()
    sk, cred = member(b"joiner")
    joiner, msg = Group.join_by_external_commit(gi, sk, cred, ratchet_tree=groups[0].tree.to_bytes())
    for g in groups:
        assert isinstance(g.process(msg), CommitMessage)
    groups.append(joiner)
    assert joiner.leaf_index == 3
    assert_agree(groups)
    # resync: member 1 rejoins, removing its old leaf
    gi = groups[2].group_info(with_ratchet_tree=True)
    old = groups[1]
    again, msg = Group.join_by_external_commit(gi, old.signing_key, Credential.basic(b"m1"), resync_leaf=1)
    for g in groups:
        out = g.process(msg)
    assert not old.active
    groups = [g for g in groups if g.active] + [again]
    assert again.leaf_index == 1
    assert_agree(groups)
    # everyone can talk afterwards
    m = again.encrypt(b"back")
    assert all(g.process(m).data == b"back" for g in groups if g is not again)


def test_own_commit_echo_merges_and_exporter():
    groups = new_group(2)
    res = groups[0].commit()
    assert groups[0].process(res.message).epoch == 2
    groups[1].process(res.message)
    assert_agree(groups)
    assert groups[0].export_secret("a", b"", 16) != groups[0].export_secret("b", b"", 16)


def test_reinit_commit_ends_the_group():
    groups = new_group(3)
    prop = groups[1].propose_reinit(b"new-group-id")
    for g in (groups[0], groups[2]):
        g.process(prop)
    res, out = commit_and_deliver(groups, groups[0], path=False)
    assert all(o.applied.reinit is not None for o in out)
    assert not any(g.active for g in groups)
    assert len({g.epoch_authenticator for g in groups}) == 1


def test_own_update_and_self_removal_are_not_committed_by_default():
    groups = new_group(3)
    own = groups[0].propose_update()
    rm_me = groups[1].propose_remove(0)
    other = groups[2].propose_update()
    for msg, sender in ((own, 0), (rm_me, 1), (other, 2)):
        for g in groups:
            if g.leaf_index != sender:
                g.process(msg)
    res, _ = commit_and_deliver(groups, groups[0])
    assert len(res.message.public_message.content.commit.proposals) == 1
    assert_agree(groups)
