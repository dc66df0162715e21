"""TreeKEM (RFC 9420 §7.4–§7.6) against treekem.json."""

import pytest

from phoenix_ref import crypto
from phoenix_ref.codec import decode, encode
from phoenix_ref.mls import messages as m
from phoenix_ref.mls import tree as t
from phoenix_ref.mls import treekem as tk
from tests.conftest import vector_params


def _context(vector, tree_hash: bytes) -> bytes:
    return encode(m.GroupContext(
        m.ProtocolVersion.mls10, vector["cipher_suite"], bytes.fromhex(vector["group_id"]),
        vector["epoch"], tree_hash, bytes.fromhex(vector["confirmed_transcript_hash"]), []))


def _private_states(vector, tree):
    states = {}
    for lp in vector["leaves_private"]:
        keys = tk.PrivateTreeKeys.for_leaf(lp["index"], bytes.fromhex(lp["encryption_priv"]))
        for ps in lp["path_secrets"]:
            keys.set_path_secret(ps["node"], bytes.fromhex(ps["path_secret"]))
        keys.check_consistent(tree)
        states[lp["index"]] = keys
    return states


@pytest.mark.parametrize("vector", vector_params("treekem.json"))
def test_treekem_vector(vector):
    assert vector["cipher_suite"] == 1
    tree = t.RatchetTree.from_bytes(bytes.fromhex(vector["ratchet_tree"]))
    states = _private_states(vector, tree)
    signers = {lp["index"]: bytes.fromhex(lp["signature_priv"]) for lp in vector["leaves_private"]}
    group_id = bytes.fromhex(vector["group_id"])
    members = [i for i, _ in tree.leaves()]
    assert set(members) == set(states)

    for entry in vector["update_paths"]:
        sender = entry["sender"]
        path = decode(m.UpdatePath, bytes.fromhex(entry["update_path"]))
        merged = tree.copy()
        merged.apply_update_path(sender, path)  # checks the leaf's parent hash
        assert merged.tree_hash().hex() == entry["tree_hash_after"]
        merged.verify_parent_hashes()
        ctx = _context(vector, merged.tree_hash())
        for j in members:
            if j == sender:
                assert entry["path_secrets"][j] is None
                continue
            keys = states[j].copy()
            got = tk.decrypt_update_path(merged, keys, sender, path, ctx)
            assert got.path_secret.hex() == entry["path_secrets"][j]
            assert got.commit_secret.hex() == entry["commit_secret"]
            keys.check_consistent(merged)

        # a fresh path from the same sender, processed by everyone else
        mine = tree.copy()
        own = tk.create_update_path(mine, sender, tree.leaf(sender), signers[sender], group_id,
                                    keys=states[sender])
        own.keys.check_consistent(mine)
        ctx = _context(vector, mine.tree_hash())
        update_path = own.encrypt(mine, ctx)
        mine.verify_parent_hashes()
        t.validate_leaf_node(update_path.leaf_node, group_id=group_id, leaf_index=sender,
                             expected_source=m.LeafNodeSource.commit)
        for j in members:
            if j == sender:
                continue
            theirs = tree.copy()
            theirs.apply_update_path(sender, update_path)
            assert theirs.tree_hash() == mine.tree_hash()
            keys = states[j].copy()
            got = tk.decrypt_update_path(theirs, keys, sender, update_path, ctx)
            assert got.commit_secret == own.commit_secret
            assert got.path_secret == own.path_secret_for(theirs, j)
            keys.check_consistent(theirs)
