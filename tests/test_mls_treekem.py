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


# --- scenarios built from scratch ---------------------------------------------------------

GROUP_ID = b"phoenix-group"


def _member(name: bytes):
    """A new member's signing key, leaf HPKE key and signed key_package LeafNode."""
    sig = crypto.SigningKey.generate()
    enc = crypto.HpkeKeyPair.generate()
    leaf = m.LeafNode(enc.public, sig.public, m.Credential.basic(name),
                      m.Capabilities([1], [1], [], [], [1]), m.LeafNodeSource.key_package,
                      m.Lifetime(0, 2**63), None, [], b"")
    return sig, enc, t.sign_leaf_node(leaf, sig)


def _context_for(tree: t.RatchetTree, epoch: int) -> bytes:
    return encode(m.GroupContext(m.ProtocolVersion.mls10, 1, GROUP_ID, epoch,
                                 tree.tree_hash(), b"", []))


def _grow_group(n: int):
    """Member 0 creates a group, then commits one Add at a time, each with a path."""
    sig0, enc0, leaf0 = _member(b"m0")
    tree = t.RatchetTree.single(leaf0)
    keys = {0: tk.PrivateTreeKeys(0, {0: enc0})}
    signers = {0: sig0}
    for i in range(1, n):
        sig, enc, leaf = _member(b"m%d" % i)
        new = tree.add_leaf(leaf)
        own = tk.create_update_path(tree, 0, tree.leaf(0), sig0, GROUP_ID, keys=keys[0])
        ctx = _context_for(tree, i)
        path = own.encrypt(tree, ctx, exclude=[new])
        for j, k in keys.items():
            if j != 0:
                got = tk.decrypt_update_path(tree, k, 0, path, ctx, exclude=[new])
                assert got.commit_secret == own.commit_secret
        keys[0] = own.keys
        # the joiner gets its path secret through the Welcome (§12.4.3.1)
        keys[new] = tk.PrivateTreeKeys(new, {2 * new: enc})
        signers[new] = sig
        keys[new].join_with_path_secret(tree, 0, own.path_secret_for(tree, new))
    for k in keys.values():
        k.check_consistent(tree)
    return tree, keys, signers


def test_group_grows_and_everyone_holds_the_root_key():
    tree, keys, signers = _grow_group(6)
    tree.validate(GROUP_ID)
    assert tree.n_leaves == 8
    for k in keys.values():
        assert tree.root in k.keys


def test_update_path_excluding_a_new_member():
    tree, keys, signers = _grow_group(3)
    _sig, _enc, leaf = _member(b"late")
    new = tree.add_leaf(leaf)  # leaf 3, under the blank node 5 next to leaf 2
    assert new == 3
    sender = 0
    own = tk.create_update_path(tree, sender, tree.leaf(sender), signers[sender], GROUP_ID)
    ctx = _context_for(tree, 9)
    path = own.encrypt(tree, ctx, exclude=[new])
    counts = [len(n.encrypted_path_secret) for n in path.nodes]
    full = own.encrypt(tree, ctx)
    assert sum(len(n.encrypted_path_secret) for n in full.nodes) == sum(counts) + 1
    # a receiver that forgets the exclusion sees the wrong ciphertext count
    with pytest.raises(tk.UpdatePathError):
        tk.decrypt_update_path(tree, keys[2].copy(), sender, path, ctx)
    got = tk.decrypt_update_path(tree, keys[2].copy(), sender, path, ctx, exclude=[new])
    assert got.commit_secret == own.commit_secret


def test_wrong_group_context_cannot_decrypt():
    tree, keys, signers = _grow_group(4)
    receiver_tree = tree.copy()
    own = tk.create_update_path(tree, 1, tree.leaf(1), signers[1], GROUP_ID)
    path = own.encrypt(tree, _context_for(tree, 5))
    receiver_tree.apply_update_path(1, path)
    with pytest.raises(tk.UpdatePathError, match="decrypt"):
        tk.decrypt_update_path(receiver_tree, keys[3].copy(), 1, path, _context_for(tree, 6))


def test_tampered_public_key_is_detected():
    from dataclasses import replace
    tree, keys, signers = _grow_group(4)
    base = tree.copy()
    own = tk.create_update_path(tree, 0, tree.leaf(0), signers[0], GROUP_ID)
    ctx = _context_for(tree, 5)
    path = own.encrypt(tree, ctx)
    bad_nodes = list(path.nodes)
    bad_nodes[-1] = replace(bad_nodes[-1], encryption_key=crypto.HpkeKeyPair.generate().public)
    bad = replace(path, nodes=bad_nodes)
    # the public merge notices it through the leaf's parent hash ...
    with pytest.raises(t.ParentHashError):
        base.copy().apply_update_path(0, bad)
    # ... and decryption through the derived key
    with pytest.raises(tk.UpdatePathError, match="does not match"):
        tk.decrypt_update_path(tree, keys[3].copy(), 0, bad, ctx)


def test_update_path_of_wrong_length():
    from dataclasses import replace
    tree, keys, signers = _grow_group(4)
    own = tk.create_update_path(tree, 0, tree.leaf(0), signers[0], GROUP_ID)
    ctx = _context_for(tree, 5)
    path = own.encrypt(tree, ctx)
    short = replace(path, nodes=path.nodes[:-1])
    with pytest.raises(tk.UpdatePathError):
        tk.decrypt_update_path(tree, keys[2].copy(), 0, short, ctx)
    with pytest.raises(t.TreeOperationError):
        tree.copy().apply_update_path(0, short)


def test_private_keys_inconsistent_with_tree():
    tree, keys, signers = _grow_group(2)
    stray = tk.PrivateTreeKeys(1, {2: crypto.HpkeKeyPair.generate()})
    with pytest.raises(tk.PrivateStateError):
        stray.check_consistent(tree)
    stray.prune(tree)
    assert stray.keys == {}
