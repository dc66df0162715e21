"""The DS's public view of a group (RFC 9420 §12.4.2 without secrets;
spec/delivery_service.md#validation, #groupinfo-updates, #ds-induced-removals)."""

import pytest

from tests.conftest import vector_params
from phoenix_ref.crypto import SigningKey
from phoenix_ref.mls.commit import ProposalInfo, RemoveOfBlankLeaf
from phoenix_ref.mls.extensions import ExternalSender, ExternalSenders, to_extension
from phoenix_ref.mls.framing import BadSignature
from phoenix_ref.mls.group import Group, ProposalMessage
from phoenix_ref.mls.keypackage import KeyPackageError
from phoenix_ref.mls.messages import (
    CIPHER_SUITE_1, Credential, GroupContext, ProtocolVersion, Sender, decode_proposal,
)
from phoenix_ref.mls.public_group import NotExternalSender, PublicGroup
from phoenix_ref.mls.transcript import TranscriptHashes
from phoenix_ref.mls.tree import RatchetTree
from phoenix_ref.spec_plugin import spec
from tests.test_mls_group import assert_agree, member, new_group


def _context(group_id: bytes, tree: RatchetTree) -> GroupContext:
    return GroupContext(ProtocolVersion.mls10, CIPHER_SUITE_1, group_id, 0, tree.tree_hash(), b"", [])


@pytest.mark.parametrize("v", vector_params("tree-validation.json"))
def test_tree_validation_vector_public_view(v):
    tree = RatchetTree.from_bytes(bytes.fromhex(v["tree"]))
    pg = PublicGroup.from_tree(tree, _context(bytes.fromhex(v["group_id"]), tree))
    for x in range(pg.tree.width):
        assert pg.tree.resolution(x) == v["resolutions"][x]
        assert pg.tree.tree_hash(x).hex() == v["tree_hashes"][x]


@pytest.mark.parametrize("v", vector_params("tree-operations.json"))
def test_tree_operations_vector_public_view(v):
    tree = RatchetTree.from_bytes(bytes.fromhex(v["tree_before"]))
    pg = PublicGroup(_context(b"", tree), tree, TranscriptHashes())
    assert pg.tree.tree_hash().hex() == v["tree_hash_before"]
    proposal = decode_proposal(bytes.fromhex(v["proposal"]))
    pg.apply_proposals([ProposalInfo(proposal, Sender.member(v["proposal_sender"]))])
    assert pg.tree.to_bytes().hex() == v["tree_after"]
    assert pg.tree.tree_hash().hex() == v["tree_hash_after"]


def ds_for(group: Group) -> PublicGroup:
    return PublicGroup.from_group_info(group.group_info(), group.tree.to_bytes())


def through_ds(ds: PublicGroup, groups, committer, **kw):
    """The committer commits, the DS validates and applies it with the
    GroupInfo signature, then the members process it."""
    res = committer.commit(**kw)
    ds.process_commit(res.message, res.group_info.signature, res.group_info.extensions)
    committer.merge_pending_commit()
    assert ds.group_info == committer.group_info()
    for g in groups:
        if g is not committer and g.active:
            g.process(res.message)
    return res


@spec("spec/delivery_service.md#validation", "informative")
def test_ds_follows_the_group():
    groups = new_group(3)
    ds = ds_for(groups[0])
    b = Group.make_key_package(*member(b"four"))
    res = through_ds(ds, groups, groups[1], adds=[b.key_package])
    groups.append(Group.join_from_welcome(res.welcome, b))
    through_ds(ds, groups, groups[3], removes=[0])
    through_ds(ds, groups, groups[2], adds=[Group.make_key_package(*member(b"x")).key_package], path=False)
    active = [g for g in groups if g.active]
    assert_agree(active)
    assert ds.epoch == active[0].epoch
    assert ds.tree.tree_hash() == active[0].tree.tree_hash()
    assert ds.group_context == active[0].group_context


@spec("spec/delivery_service.md#groupinfo-updates", "MUST")
def test_group_info_from_committer_signature():
    groups = new_group(2)
    ds = ds_for(groups[0])
    res = groups[1].commit()
    commit = ds.validate_commit(res.message)
    assert commit.group_info_tbs(res.group_info.extensions) == res.group_info.tbs()
    with pytest.raises(BadSignature):
        ds.merge_commit(commit, bytes(64), res.group_info.extensions)
    assert ds.epoch == 1  # unchanged
    gi = ds.merge_commit(commit, res.group_info.signature, res.group_info.extensions)
    assert gi.signer == 1 and ds.epoch == 2
    # the assembled GroupInfo lets a new client join by external commit
    joiner, msg = Group.join_by_external_commit(gi, *member(b"ext"), ratchet_tree=ds.tree)
    ext = ds.validate_commit(msg)
    assert ext.committer == 2
    ds.merge_commit(ext, joiner.group_info().signature, joiner.group_info().extensions)
    groups[1].merge_pending_commit()
    groups[0].process(res.message)
    for g in groups:
        g.process(msg)
    assert_agree(groups + [joiner])
    assert ds.tree.tree_hash() == joiner.tree.tree_hash()


@spec("spec/delivery_service.md#ds-induced-removals", "informative")
def test_ds_induced_removal():
    ds_key = SigningKey.generate()
    ext = to_extension(ExternalSenders([ExternalSender(ds_key.public, Credential.basic(b"ds"))]))
    groups = new_group(3, extensions=[ext])
    ds = ds_for(groups[0])
    prop = ds.external_remove_proposal(ds_key, 2)
    assert len(ds.proposals) == 1
    for g in groups:
        assert isinstance(g.process(prop), ProposalMessage)
    through_ds(ds, groups, groups[0])
    assert not groups[2].active and ds.tree.leaf(2) is None
    assert len(ds.proposals) == 0
    with pytest.raises(NotExternalSender):
        ds.external_remove_proposal(SigningKey.generate(), 1)
    with pytest.raises(RemoveOfBlankLeaf):
        ds.external_remove_proposal(ds_key, 2)


def test_ds_stores_member_proposals_and_validates_key_packages():
    groups = new_group(2)
    ds = ds_for(groups[0])
    b = Group.make_key_package(*member(b"kp"))
    prop = groups[1].propose_add(b.key_package)
    info = ds.process_proposal(prop)
    groups[0].process(prop)
    res = through_ds(ds, groups, groups[0])
    groups.append(Group.join_from_welcome(res.welcome, b))
    assert info.ref is not None and ds.tree.leaf(2) == b.key_package.leaf_node
    assert_agree(groups)
    from dataclasses import replace
    with pytest.raises(KeyPackageError):
        ds.validate_key_package(replace(b.key_package, signature=bytes(64)))


def test_private_commit_is_not_for_the_ds():
    from phoenix_ref.mls.public_group import CommitNotPublic
    groups = new_group(2)
    ds = ds_for(groups[0])
    res = groups[1].commit(private=True)
    with pytest.raises(CommitNotPublic):
        ds.validate_commit(res.message)
