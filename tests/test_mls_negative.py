"""Invalid MLS input is refused with its own error class, by the member view
and by the DS's public view (RFC 9420 §6, §7.9.2, §12.2, §12.4.2, §12.4.3.1)."""

from dataclasses import replace

import pytest

from phoenix_ref.crypto import HpkeKeyPair, SigningKey, random_bytes
from phoenix_ref.mls import commit as c
from phoenix_ref.mls.framing import (
    BadMembershipTag, BadSignature, WrongEpoch, authenticate, build_content, protect_public,
    with_confirmation_tag,
)
from phoenix_ref.mls.group import Group
from phoenix_ref.mls.messages import (
    Add, Commit, Credential, ExternalInit, LeafNodeSource, GroupContextExtensions, MLSMessage, ParentNode, PreSharedKey, ProposalOrRef,
    ReInit, Remove, Sender, Update, WireFormat, ProtocolVersion, CIPHER_SUITE_1,
)
from phoenix_ref.mls.psk import external_psk_id
from phoenix_ref.mls.public_group import PublicGroup
from phoenix_ref.mls.transcript import BadConfirmationTag
from phoenix_ref.mls.tree import (
    DuplicateSignatureKeyError, ParentHashError, UnmergedLeavesError, sign_leaf_node,
)
from tests.test_mls_group import member, new_group


def forge(sender_group: Group, commit: Commit, *, signer: SigningKey | None = None,
          epoch_delta: int = 0) -> MLSMessage:
    """A PublicMessage Commit from ``sender_group``'s leaf with a valid
    membership tag, signed by ``signer`` (default: the sender's key), carrying
    a dummy confirmation tag (every check below fails before that one)."""
    st = sender_group._state
    ctx = replace(st.group_context, epoch=st.group_context.epoch + epoch_delta)
    fc = build_content(ctx.group_id, ctx.epoch, Sender.member(sender_group.leaf_index), commit)
    content = authenticate(signer or sender_group.signing_key, WireFormat.mls_public_message, fc, ctx)
    content = with_confirmation_tag(content, bytes(32))
    return MLSMessage.wrap(protect_public(content, ctx, st.secrets.membership_key))


def setup(n=3):
    groups = new_group(n)
    return groups, PublicGroup.from_group_info(groups[0].group_info(), groups[0].tree)


def both_refuse(groups, receiver, ds, msg, error):
    with pytest.raises(error):
        receiver.process(msg)
    with pytest.raises(error):
        ds.validate_commit(msg)


def by_value(*proposals):
    return Commit([ProposalOrRef.by_value(p) for p in proposals], None)


def valid_path_commit(g: Group) -> Commit:
    res = g.commit()
    g.clear_pending_commit()
    return res.message.public_message.content.commit


# --- framing ---------------------------------------------------------------------------

def test_bad_signature():
    groups, ds = setup()
    msg = forge(groups[1], valid_path_commit(groups[1]), signer=SigningKey.generate())
    both_refuse(groups, groups[0], ds, msg, BadSignature)


def test_bad_membership_tag_member_only():
    groups, ds = setup()
    res = groups[1].commit()
    pm = res.message.public_message
    msg = MLSMessage.wrap(replace(pm, membership_tag=bytes(32)))
    with pytest.raises(BadMembershipTag):
        groups[0].process(msg)
    ds.validate_commit(msg)  # the DS has no membership key; everything else is fine


def test_wrong_epoch():
    groups, ds = setup()
    old = groups[1].commit().message
    groups[1].clear_pending_commit()
    res = groups[2].commit()
    groups[2].merge_pending_commit()
    groups[0].process(res.message)
    ds.process_commit(res.message, res.group_info.signature, res.group_info.extensions)
    both_refuse(groups, groups[0], ds, old, WrongEpoch)


def test_tampered_confirmation_tag():
    groups, _ = setup()
    pm = groups[1].commit().message.public_message
    st = groups[0]._state
    from phoenix_ref.mls.messages import AuthenticatedContent
    content = AuthenticatedContent(WireFormat.mls_public_message, pm.content, pm.auth)
    content = with_confirmation_tag(content, bytes(32))
    msg = MLSMessage.wrap(protect_public(content, st.group_context, st.secrets.membership_key))
    epoch = groups[0].epoch
    with pytest.raises(BadConfirmationTag):
        groups[0].process(msg)
    assert groups[0].epoch == epoch  # state unchanged


# --- tree rules ------------------------------------------------------------------------------

def test_bad_parent_hash_in_update_path():
    groups, ds = setup()
    commit = valid_path_commit(groups[1])
    leaf = replace(commit.path.leaf_node, parent_hash=random_bytes(32))
    leaf = sign_leaf_node(leaf, groups[1].signing_key, groups[1].group_id, 1)
    msg = forge(groups[1], replace(commit, path=replace(commit.path, leaf_node=leaf)))
    both_refuse(groups, groups[0], ds, msg, ParentHashError)


def test_duplicate_signature_key_in_update_path():
    groups, ds = setup()
    commit = valid_path_commit(groups[1])
    other = groups[2].signing_key
    leaf = replace(commit.path.leaf_node, signature_key=other.public)
    leaf = sign_leaf_node(leaf, other, groups[1].group_id, 1)
    msg = forge(groups[1], replace(commit, path=replace(commit.path, leaf_node=leaf)))
    both_refuse(groups, groups[0], ds, msg, DuplicateSignatureKeyError)


def test_duplicate_signature_key_in_tree():
    groups, _ = setup()
    tree = groups[0].tree.copy()
    leaf = tree.leaf(2)
    tree.set_leaf(2, sign_leaf_node(replace(leaf, signature_key=groups[1].signing_key.public),
                                    groups[1].signing_key, groups[0].group_id, 2))
    ctx = replace(groups[0].group_context, tree_hash=tree.tree_hash())
    with pytest.raises(DuplicateSignatureKeyError):
        PublicGroup.from_tree(tree, ctx)


def test_unmerged_leaves_violation():
    groups = new_group(3)  # leaf 0's path sets nodes 1 and 3
    res = groups[0].commit(adds=[Group.make_key_package(*member(b"e")).key_package], path=False)
    groups[0].merge_pending_commit()
    assert res.welcome is not None
    tree = groups[0].tree.copy()
    assert tree.parent_node(3).unmerged_leaves == [3] and tree.parent_node(5) is None
    # leaf 3 is unmerged at the root but not at node 5 between them
    tree.set_parent(5, ParentNode(HpkeKeyPair.generate().public, b"", []))
    ctx = replace(groups[0].group_context, tree_hash=tree.tree_hash())
    with pytest.raises(UnmergedLeavesError):
        PublicGroup.from_tree(tree, ctx)


# --- proposal list rules (§12.2), at the committer, the members and the DS -------------------------

def test_remove_of_blank_leaf():
    groups, ds = setup(4)
    res = groups[0].commit(removes=[3])
    groups[0].merge_pending_commit()
    for g in groups[1:3]:
        g.process(res.message)
    ds.process_commit(res.message, res.group_info.signature, res.group_info.extensions)
    with pytest.raises(c.RemoveOfBlankLeaf):
        groups[0].commit(removes=[3])
    msg = forge(groups[1], replace(valid_path_commit(groups[1]),
                                   proposals=[ProposalOrRef.by_value(Remove(3))]))
    both_refuse(groups, groups[0], ds, msg, c.RemoveOfBlankLeaf)


def test_two_updates_for_one_leaf():
    groups, ds = setup()
    for _ in range(2):
        prop = groups[1].propose_update()
        groups[0].process(prop)
        ds.process_proposal(prop)
    refs_both = [p.ref for p in groups[0].proposals]
    with pytest.raises(c.DuplicateLeafProposals):
        groups[0].commit(by_reference=refs_both)
    # by default the committer keeps only the most recent Update of a leaf (§12.2 SHOULD)
    res = groups[0].commit()
    assert [p.reference for p in res.message.public_message.content.commit.proposals] == refs_both[1:]
    groups[0].clear_pending_commit()
    refs = [ProposalOrRef.by_reference(p.ref) for p in groups[0].proposals]
    msg = forge(groups[2], replace(valid_path_commit(groups[2]), proposals=refs))
    groups[2].proposals = groups[0].proposals
    both_refuse(groups, groups[0], ds, msg, c.DuplicateLeafProposals)


def test_add_of_existing_key_package():
    groups, ds = setup()
    b = Group.make_key_package(*member(b"new"))
    res = groups[0].commit(adds=[b.key_package])
    groups[0].merge_pending_commit()
    groups[1].process(res.message)
    ds.process_commit(res.message, res.group_info.signature, res.group_info.extensions)
    with pytest.raises(c.AddOfExistingMember):
        groups[0].commit(adds=[b.key_package])
    msg = forge(groups[1], by_value(Add(b.key_package)))
    both_refuse(groups, groups[1 - 1], ds, msg, c.AddOfExistingMember)


def test_other_list_rules():
    groups, ds = setup()
    g = groups[0]
    b = Group.make_key_package(*member(b"n"))
    pid = external_psk_id(b"p")
    g.external_psks[b"p"] = bytes(32)
    cases = [
        (dict(adds=[b.key_package, b.key_package]), c.DuplicateAdd),
        (dict(removes=[0]), c.CommitterRemoved),
        (dict(proposals=[PreSharedKey(pid), PreSharedKey(pid)]), c.DuplicatePsk),
        (dict(proposals=[GroupContextExtensions([]), GroupContextExtensions([])]),
         c.MultipleGroupContextExtensions),
        (dict(proposals=[ReInit(b"x", ProtocolVersion.mls10, CIPHER_SUITE_1, []), Remove(1)]),
         c.ReInitNotAlone),
        (dict(proposals=[ExternalInit(HpkeKeyPair.generate().public)]), c.InvalidExternalCommit),
    ]
    for kw, error in cases:
        with pytest.raises(error):
            g.commit(**kw)
    leaf = sign_leaf_node(replace(g.tree.leaf(0), encryption_key=HpkeKeyPair.generate().public,
                                  leaf_node_source=2, lifetime=None, parent_hash=None),
                           g.signing_key, g.group_id, 0)
    msg = forge(groups[0], by_value(Update(leaf)))
    with pytest.raises(c.CommitterUpdate):
        groups[1].process(msg)
    with pytest.raises(c.PathRequired):
        groups[1].process(forge(groups[0], by_value(Remove(2))))
    with pytest.raises(c.PathRequired):
        ds.validate_commit(forge(groups[0], Commit([], None)))
    with pytest.raises(c.UnknownProposalRef):
        groups[1].process(forge(groups[0], Commit([ProposalOrRef.by_reference(bytes(32))], None)))


def test_add_with_encryption_key_in_use():
    from phoenix_ref.mls.tree import DuplicateEncryptionKeyError
    from phoenix_ref.crypto import sign_with_label
    groups, _ = setup()
    b = Group.make_key_package(*member(b"dup"))
    kp = b.key_package
    leaf = sign_leaf_node(replace(kp.leaf_node, encryption_key=groups[1].tree.leaf(1).encryption_key),
                          b.signing_key)
    kp = replace(kp, leaf_node=leaf)
    kp = replace(kp, signature=sign_with_label(b.signing_key, "KeyPackageTBS", kp.tbs()))
    with pytest.raises(DuplicateEncryptionKeyError):
        groups[0].commit(adds=[kp])


# --- UpdatePath shape (§7.6), resync (§12.2), credential types (§7.3) -------------------------------

def test_update_path_node_with_a_missing_ciphertext():
    """§7.6: each UpdatePathNode has one ciphertext per node of the copath
    child's resolution. Member 0 decrypts the first node only, the DS none:
    both still refuse a path whose second node lacks a ciphertext."""
    from phoenix_ref.mls.treekem import UpdatePathError
    groups, ds = setup(4)
    commit = valid_path_commit(groups[1])  # leaf 1: nodes 1 and 3; node 3 encrypts to leaves 2 and 3
    nodes = list(commit.path.nodes)
    assert len(nodes[1].encrypted_path_secret) == 2
    nodes[1] = replace(nodes[1], encrypted_path_secret=nodes[1].encrypted_path_secret[:1])
    msg = forge(groups[1], replace(commit, path=replace(commit.path, nodes=nodes)))
    both_refuse(groups, groups[0], ds, msg, UpdatePathError)


def test_resync_keeps_the_removed_leaf_encryption_key(monkeypatch):
    """§12.2: a resync's path LeafNode meets the rules of an Update of the
    removed leaf, so its encryption key must differ from that leaf's."""
    groups, ds = setup(3)
    gi = groups[2].group_info(with_ratchet_tree=True)
    old = groups[1]
    old_key = old.tree.leaf(1).encryption_key
    monkeypatch.setattr(HpkeKeyPair, "generate", classmethod(lambda cls: cls(bytes(32), old_key)))
    _again, msg = Group.join_by_external_commit(gi, old.signing_key, Credential.basic(b"m1"), resync_leaf=1)
    monkeypatch.undo()
    assert msg.public_message.content.commit.path.leaf_node.encryption_key == old_key
    with pytest.raises(c.InvalidUpdatePath, match="encryption key"):
        groups[0].process(msg)
    with pytest.raises(c.InvalidUpdatePath, match="encryption key"):
        ds.validate_commit(msg)


def _basic_only_member(groups):
    """Add a member whose leaf supports basic credentials only; returns its Group."""
    from phoenix_ref.mls.keypackage import create_key_package
    from phoenix_ref.mls.messages import Capabilities
    sk, cred = member(b"basic-only")
    bundle = create_key_package(sk, cred, now=10**9, capabilities=Capabilities([1], [1], [], [], [1]))
    res = groups[0].commit(adds=[bundle.key_package])
    groups[0].merge_pending_commit()
    for g in groups[1:]:
        g.process(res.message)
    return Group.join_from_welcome(res.welcome, bundle)


def _x509_key_package(**kw):
    from phoenix_ref.mls.keypackage import create_key_package
    return create_key_package(SigningKey.generate(), Credential.x509([b"cert"]), now=10**9, **kw).key_package


def test_update_to_a_credential_type_a_member_does_not_support():
    """§7.3: the credential type of an Update's leaf is supported by all members."""
    from phoenix_ref.mls.keypackage import make_leaf_node
    groups, _ = setup(2)
    groups.append(_basic_only_member(groups))
    g1 = groups[1]
    leaf = make_leaf_node(g1.signing_key, Credential.x509([b"cert"]), HpkeKeyPair.generate().public,
                          LeafNodeSource.update, group_id=g1.group_id, leaf_index=1)
    msg, _ = g1._send(Update(leaf))
    groups[0].process(msg)
    with pytest.raises(c.CredentialNotSupported):
        groups[0].commit()


def test_added_members_support_each_others_credential_types():
    """§7.3: after a Commit every leaf supports every credential type in use,
    including those of members added by the same Commit."""
    from phoenix_ref.mls.keypackage import create_key_package
    from phoenix_ref.mls.messages import Capabilities
    groups, ds = setup(2)
    basic_only = create_key_package(SigningKey.generate(), Credential.basic(b"b"), now=10**9,
                                    capabilities=Capabilities([1], [1], [], [], [1])).key_package
    x509 = _x509_key_package()
    with pytest.raises(c.CredentialNotSupported):
        groups[0].commit(adds=[basic_only, x509])
    msg = forge(groups[1], replace(valid_path_commit(groups[1]),
                                   proposals=[ProposalOrRef.by_value(Add(kp)) for kp in (basic_only, x509)]))
    both_refuse(groups, groups[0], ds, msg, c.CredentialNotSupported)


def test_reinit_extensions_name_each_type_once():
    """§13 for the extensions a ReInit proposes for the new group."""
    from phoenix_ref.mls.messages import Extension
    groups, _ = setup(2)
    twice = [Extension(0xF0AA, b""), Extension(0xF0AA, b"")]
    with pytest.raises(c.InvalidProposal, match="ReInit"):
        groups[0].commit(proposals=[ReInit(b"new", ProtocolVersion.mls10, CIPHER_SUITE_1, twice)])


def test_external_joiner_must_support_the_group_extensions():
    """§13: "A client joining a group MUST verify that it supports every
    extension in the GroupContext"; an external joiner whose capabilities
    lack one refuses to join instead of sending a Commit members reject."""
    from phoenix_ref.mls.messages import Extension
    from phoenix_ref.mls.tree import CapabilitiesError
    ext = Extension(0xF0AA, b"")
    sk, cred = member(b"creator")
    creator = Group.create(sk, cred, extensions=[ext], leaf_extensions=[ext])
    gi = creator.group_info(with_ratchet_tree=True)
    with pytest.raises(CapabilitiesError):
        Group.join_by_external_commit(gi, *member(b"joiner"))
    joiner, msg = Group.join_by_external_commit(gi, *member(b"joiner"), leaf_extensions=[ext])
    creator.process(msg)
    assert creator.epoch_authenticator == joiner.epoch_authenticator
