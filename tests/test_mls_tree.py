"""The ratchet tree (RFC 9420 §7) against tree-validation.json and tree-operations.json."""

from dataclasses import replace

import pytest

from phoenix_ref import crypto
from phoenix_ref.codec import decode
from phoenix_ref.mls import messages as m
from phoenix_ref.mls import tree as t
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
