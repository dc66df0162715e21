"""The ratchet tree (RFC 9420 §7) against tree-validation.json and tree-operations.json."""

from dataclasses import replace

import pytest

from phoenix_ref import crypto
from phoenix_ref.mls import messages as m
from phoenix_ref.mls import tree as t
from phoenix_ref.shared import mls_vectors
from tests.conftest import vector_params


@pytest.mark.parametrize("vector", vector_params("tree-validation.json"))
def test_tree_validation_vector(vector):
    assert vector["cipher_suite"] == 1
    tree = t.RatchetTree.from_bytes(bytes.fromhex(vector["tree"]))
    assert tree.width == len(vector["tree_hashes"]) == len(vector["resolutions"])
    for x in range(tree.width):
        assert tree.resolution(x) == vector["resolutions"][x]
        assert tree.tree_hash(x).hex() == vector["tree_hashes"][x]
    tree.verify_parent_hashes()
    tree.validate(bytes.fromhex(vector["group_id"]))
    assert tree.to_bytes().hex() == vector["tree"]


@pytest.mark.parametrize("vector", vector_params("tree-operations.json"))
def test_tree_operations_vector(vector):
    tree = t.RatchetTree.from_bytes(bytes.fromhex(vector["tree_before"]))
    assert tree.tree_hash().hex() == vector["tree_hash_before"]
    proposal = m.decode_proposal(bytes.fromhex(vector["proposal"]))
    sender = vector["proposal_sender"]
    if isinstance(proposal, m.Add):
        tree.add_leaf(proposal.key_package.leaf_node)
    elif isinstance(proposal, m.Update):
        tree.update_leaf(sender, proposal.leaf_node)
    elif isinstance(proposal, m.Remove):
        tree.remove_leaf(proposal.removed)
    else:
        raise AssertionError(f"unexpected proposal {proposal!r}")
    assert tree.to_bytes().hex() == vector["tree_after"]
    assert tree.tree_hash().hex() == vector["tree_hash_after"]
    # the cache gave the same hash as a fresh computation
    assert t.RatchetTree.from_bytes(tree.to_bytes()).tree_hash() == tree.tree_hash()



# --- negative cases: each broken rule raises its own error class --------------------

def _vector_tree(n_leaves: int):
    """A tree of tree-validation.json with ``n_leaves`` leaves and its group id."""
    for v in mls_vectors("tree-validation.json"):
        tree = t.RatchetTree.from_bytes(bytes.fromhex(v["tree"]))
        if tree.n_leaves == n_leaves and tree.member_count() == n_leaves:
            return tree, bytes.fromhex(v["group_id"])
    raise AssertionError(f"no full {n_leaves}-leaf tree in the vectors")


def test_valid_tree_passes_and_tree_hash_is_checked():
    tree, group_id = _vector_tree(8)
    tree.validate(group_id, tree_hash=tree.tree_hash())
    with pytest.raises(t.TreeHashMismatch):
        tree.validate(group_id, tree_hash=bytes(32))


def test_bad_parent_hash():
    tree, group_id = _vector_tree(8)
    node = tree.parent_node(5)
    tree.set_parent(5, replace(node, encryption_key=crypto.HpkeKeyPair.generate().public))
    with pytest.raises(t.ParentHashError):
        tree.verify_parent_hashes()
    with pytest.raises(t.ParentHashError):
        tree.validate(group_id)


def test_unmerged_leaf_outside_subtree():
    tree, group_id = _vector_tree(8)
    node = tree.parent_node(1)  # covers leaves 0 and 1
    tree.set_parent(1, replace(node, unmerged_leaves=[5]))
    with pytest.raises(t.UnmergedLeavesError):
        tree.validate(group_id)


def test_unmerged_leaf_missing_below():
    tree, group_id = _vector_tree(8)
    # leaf 0 unmerged at node 3 must also be unmerged at the non-blank node 1 below
    tree.set_parent(3, replace(tree.parent_node(3), unmerged_leaves=[0]))
    with pytest.raises(t.UnmergedLeavesError, match="node 1"):
        tree.validate(group_id)


def test_unmerged_leaves_unsorted():
    tree, group_id = _vector_tree(8)
    tree.set_parent(3, replace(tree.parent_node(3), unmerged_leaves=[1, 0]))
    tree.set_parent(1, replace(tree.parent_node(1), unmerged_leaves=[0, 1]))
    with pytest.raises(t.UnmergedLeavesError, match="sorted"):
        tree.check_unmerged_leaves()


def test_duplicate_signature_key():
    tree, group_id = _vector_tree(8)
    tree.set_leaf(3, replace(tree.leaf(3), signature_key=tree.leaf(0).signature_key))
    with pytest.raises(t.DuplicateSignatureKeyError):
        tree.validate(group_id)


def test_duplicate_encryption_key():
    tree, group_id = _vector_tree(8)
    tree.set_parent(1, replace(tree.parent_node(1), encryption_key=tree.leaf(6).encryption_key))
    with pytest.raises(t.DuplicateEncryptionKeyError):
        tree.validate(group_id)


def test_bad_leaf_signature():
    tree, group_id = _vector_tree(8)
    leaf = tree.leaf(2)
    tree.set_leaf(2, replace(leaf, signature=bytes([leaf.signature[0] ^ 1]) + leaf.signature[1:]))
    with pytest.raises(t.LeafSignatureError):
        tree.validate(group_id)


def test_leaf_signed_for_another_group_or_index():
    tree, group_id = _vector_tree(8)
    with pytest.raises(t.LeafSignatureError):
        tree.validate(group_id + b"x")
    leaf = tree.leaf(4)
    assert leaf.leaf_node_source == m.LeafNodeSource.commit
    t.verify_leaf_signature(leaf, group_id, 4)
    with pytest.raises(t.LeafSignatureError):
        t.verify_leaf_signature(leaf, group_id, 5)


def test_leaf_validation_capabilities_and_source():
    key = crypto.SigningKey.generate()
    leaf = m.LeafNode(b"e" * 32, key.public, m.Credential.basic(b"a"),
                      m.Capabilities([1], [1], [], [], [1]), m.LeafNodeSource.key_package,
                      m.Lifetime(0, 100), None, [m.Extension(0xF003, b"")], b"")
    leaf = t.sign_leaf_node(leaf, key)
    with pytest.raises(t.CapabilitiesError):  # extension used but not listed
        t.validate_leaf_node(leaf, group_id=None, leaf_index=None)
    leaf = t.sign_leaf_node(replace(leaf, extensions=[]), key)
    t.validate_leaf_node(leaf, group_id=None, leaf_index=None,
                         expected_source=m.LeafNodeSource.key_package, now=50)
    with pytest.raises(t.LeafNodeError):
        t.validate_leaf_node(leaf, group_id=None, leaf_index=None,
                             expected_source=m.LeafNodeSource.update)
    with pytest.raises(t.LeafNodeError):
        t.validate_leaf_node(leaf, group_id=None, leaf_index=None, now=101)
    with pytest.raises(t.CapabilitiesError):  # group uses x509 too
        t.validate_leaf_node(leaf, group_id=None, leaf_index=None, credential_types_in_use=[1, 2])
    required = m.Extension(3, b"\x02\xf0\x01\x00\x00")  # RequiredCapabilities([0xF001], [], [])
    with pytest.raises(t.CapabilitiesError):
        t.validate_leaf_node(leaf, group_id=None, leaf_index=None, extensions=[required])


def _kp_leaf(key, **changes):
    leaf = m.LeafNode(b"e" * 32, key.public, m.Credential.basic(b"a"),
                      m.Capabilities([1], [1], [0xF003], [], [1]), m.LeafNodeSource.key_package,
                      m.Lifetime(1000, 2000), None, [], b"")
    return t.sign_leaf_node(replace(leaf, **changes), key)


def test_leaf_extensions_name_each_type_once():
    """RFC 9420 §13: "Any field containing a list of extensions MUST NOT have
    more than one extension of any given type"."""
    key = crypto.SigningKey.generate()
    t.validate_leaf_node(_kp_leaf(key, extensions=[m.Extension(0xF003, b"")]), group_id=None, leaf_index=None)
    twice = _kp_leaf(key, extensions=[m.Extension(0xF003, b""), m.Extension(0xF003, b"x")])
    with pytest.raises(t.DuplicateLeafExtension):
        t.validate_leaf_node(twice, group_id=None, leaf_index=None)


def test_leaf_lifetime_has_a_maximum():
    """RFC 9420 §7.2: the application defines a maximum total lifetime and
    rejects longer ones (checked with the time)."""
    key = crypto.SigningKey.generate()
    longest = _kp_leaf(key, lifetime=m.Lifetime(1000, 1000 + t.MAX_LEAF_LIFETIME_SECONDS))
    t.validate_leaf_node(longest, group_id=None, leaf_index=None, now=1500)
    too_long = _kp_leaf(key, lifetime=m.Lifetime(1000, 1001 + t.MAX_LEAF_LIFETIME_SECONDS))
    with pytest.raises(t.LifetimeError):
        t.validate_leaf_node(too_long, group_id=None, leaf_index=None, now=1500)
    with pytest.raises(t.LifetimeError):
        t.validate_leaf_node(_kp_leaf(key), group_id=None, leaf_index=None, now=2001)


def test_leaf_supports_the_group_version_and_cipher_suite():
    """RFC 9420 §7.3: the LeafNode is compatible with the group's parameters."""
    key = crypto.SigningKey.generate()
    for caps in (m.Capabilities([1], [2], [], [], [1]), m.Capabilities([], [1], [], [], [1])):
        with pytest.raises(t.CapabilitiesError):
            t.validate_leaf_node(_kp_leaf(key, capabilities=caps), group_id=None, leaf_index=None)


def test_malformed_node_arrays():
    tree, _ = _vector_tree(4)
    nodes = tree.to_nodes()
    with pytest.raises(t.TreeStructureError):
        t.RatchetTree.from_nodes(nodes + [None])
    with pytest.raises(t.TreeStructureError):
        t.RatchetTree.from_nodes([])
    with pytest.raises(t.TreeStructureError):
        t.RatchetTree.from_nodes([nodes[1]])  # a parent node in a leaf slot


def test_remove_blank_leaf_is_refused_and_truncates():
    tree, _ = _vector_tree(8)
    tree.remove_leaf(7)
    tree.remove_leaf(6)
    tree.remove_leaf(5)
    assert tree.n_leaves == 8
    tree.remove_leaf(4)
    assert tree.n_leaves == 4  # right half empty: truncated
    with pytest.raises(t.TreeOperationError):
        tree.remove_leaf(4)
    assert tree.free_leaf_index() == 4


def test_tree_hash_cache_recomputes_only_the_direct_path():
    tree, _ = _vector_tree(32)
    tree.tree_hash()
    before = list(tree._hashes)
    leaf = tree.leaf(9)
    tree.update_leaf(9, replace(leaf, signature=b"other"))
    path = set(tree.direct_path(9)) | {18}
    for x in range(tree.width):
        if x in path:
            assert tree._hashes[x] is None
        else:
            assert tree._hashes[x] == before[x]
    fresh = t.RatchetTree.from_nodes(tree.to_nodes())
    assert tree.tree_hash() == fresh.tree_hash()


@pytest.mark.parametrize("vector", vector_params("tree-operations.json"))
def test_tree_restored_node_by_node_behaves_as_decoded(vector):
    """A tree restored from per-node encodings (the DS's, decoded on first
    read) gives the same resolutions, key counts, hashes and results of the
    proposals as the decoded tree, and writes back the entries it kept."""
    plain = t.RatchetTree.from_bytes(bytes.fromhex(vector["tree_before"]))
    entries = plain.to_encoded()
    lazy = t.RatchetTree.from_encoded(entries, plain.node_hashes())
    assert lazy.to_encoded() == entries
    for x in range(plain.width):
        assert lazy.resolution(x) == plain.resolution(x)
    for _, leaf in plain.leaves():
        assert lazy.signature_key_count(leaf.signature_key) == plain.signature_key_count(leaf.signature_key)
        assert lazy.encryption_key_in_use(leaf.encryption_key)
    assert lazy.credential_types_in_use() == plain.credential_types_in_use()
    proposal = m.decode_proposal(bytes.fromhex(vector["proposal"]))
    copy = lazy.copy()
    if isinstance(proposal, m.Add):
        copy.add_leaf(proposal.key_package.leaf_node)
    elif isinstance(proposal, m.Update):
        copy.update_leaf(vector["proposal_sender"], proposal.leaf_node)
    else:
        copy.remove_leaf(proposal.removed)
    assert copy.to_bytes().hex() == vector["tree_after"]
    assert copy.tree_hash().hex() == vector["tree_hash_after"]
    after = bytes.fromhex(vector["tree_after"])   # the items follow a varint length (RFC 9420 §2.1.2)
    assert b"".join(b"\x00" if e is None else b"\x01" + e for e in copy.to_encoded()) \
        == after[1 << (after[0] >> 6):]
    assert lazy.to_encoded() == entries   # the copy's changes stay in the copy
