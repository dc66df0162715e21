"""TreeKEM: path secrets, node keys and UpdatePaths (RFC 9420 §7.4–§7.6, §8).

A committer refreshes its leaf and the nodes on its filtered direct path
(§7.4 "Ratchet Tree Evolution"):

    path_secret[0]   random
    path_secret[n]   = DeriveSecret(path_secret[n-1], "path")
    node_secret[n]   = DeriveSecret(path_secret[n], "node")
    node_priv, node_pub = KEM.DeriveKeyPair(node_secret[n])
    commit_secret    = DeriveSecret(path_secret[last], "path")      (§8)

and encrypts each path secret to the resolution of the copath child below
that node, without the leaves added by the same Commit (§7.5, §7.6), with
``EncryptWithLabel(node_public_key, "UpdatePathNode", group_context,
path_secret)`` where ``group_context`` is the serialized provisional
GroupContext (its tree hash already reflects the merged path).

The flow for a committer::

    own = create_update_path(tree, sender, leaf_template, signer, group_id)
    # tree now holds the new public path; build the provisional GroupContext
    update_path = own.encrypt(tree, encode(group_context), exclude=new_leaves)

and for a receiver::

    tree.apply_update_path(sender, update_path)          # public merge (tree.py)
    result = decrypt_update_path(tree, keys, sender, update_path,
                                 encode(group_context), exclude=new_leaves)

Private keys live in :class:`PrivateTreeKeys`, one per member, indexed by node.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .. import crypto
from . import MlsError
from . import tree_math as tm
from .messages import LeafNode, LeafNodeSource, UpdatePath, UpdatePathNode
from .tree import RatchetTree, sign_leaf_node

PATH_LABEL = "UpdatePathNode"


class TreeKemError(MlsError):
    """Base class of TreeKEM failures."""


class UpdatePathError(TreeKemError):
    """An UpdatePath cannot be processed: wrong shape, undecryptable, or keys that
    do not match the decrypted path secret (§7.5)."""


class PrivateStateError(TreeKemError):
    """Private keys disagree with the public tree (the tree invariant of §4.2)."""


# --- derivations (§7.4, §8) ----------------------------------------------------------


def next_path_secret(path_secret: bytes) -> bytes:
    """path_secret[n+1] = DeriveSecret(path_secret[n], "path")."""
    return crypto.derive_secret(path_secret, "path")


def node_key_pair(path_secret: bytes) -> crypto.HpkeKeyPair:
    """KEM.DeriveKeyPair(DeriveSecret(path_secret, "node"))."""
    return crypto.HpkeKeyPair.derive(crypto.derive_secret(path_secret, "node"))


def hpke_pair_from_private(private: bytes) -> crypto.HpkeKeyPair:
    """The X25519 key pair (suite 1's KEM) of a serialized private key."""
    try:
        sk = X25519PrivateKey.from_private_bytes(private)
    except ValueError as e:
        raise PrivateStateError("invalid HPKE private key") from e
    pub = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return crypto.HpkeKeyPair(private, pub)


# --- a member's private keys ---------------------------------------------------------------


@dataclass
class PrivateTreeKeys:
    """The private keys one member holds: its leaf and some parent nodes."""
    leaf_index: int
    keys: dict[int, crypto.HpkeKeyPair] = field(default_factory=dict)

    @classmethod
    def for_leaf(cls, leaf_index: int, encryption_priv: bytes) -> "PrivateTreeKeys":
        return cls(leaf_index, {2 * leaf_index: hpke_pair_from_private(encryption_priv)})

    def copy(self) -> "PrivateTreeKeys":
        return PrivateTreeKeys(self.leaf_index, dict(self.keys))

    def set_path_secret(self, x: int, path_secret: bytes) -> None:
        """Hold the key pair that ``path_secret`` gives parent node ``x``."""
        self.keys[x] = node_key_pair(path_secret)

    def join_with_path_secret(self, tree: RatchetTree, committer: int, path_secret: bytes) -> None:
        """Take the Welcome's ``path_secret`` (§12.4.3.1, joining).

        It belongs to the lowest common ancestor of this leaf and the
        committer's; the secrets of the nodes above it on the committer's
        filtered direct path follow by "path" derivation. Every derived public
        key must match the tree, else :class:`PrivateStateError`.
        """
        me = 2 * self.leaf_index
        secret: bytes | None = None
        for p, _c in tree.filtered_path_pairs(committer):
            if secret is None and tm.is_ancestor(p, me):
                secret = path_secret
            if secret is not None:
                pair = node_key_pair(secret)
                if tree.node(p) is None or tree.node(p).encryption_key != pair.public:
                    raise PrivateStateError(f"path secret does not give the public key of node {p}")
                self.keys[p] = pair
                secret = next_path_secret(secret)
        if secret is None:
            raise PrivateStateError("no common ancestor with the committer on its filtered path")

    def check_consistent(self, tree: RatchetTree) -> None:
        """Every held key matches a non-blank node's public key (FORMAT.md, §4.2)."""
        for x, pair in self.keys.items():
            node = tree.node(x) if x < tree.width else None
            if node is None or node.encryption_key != pair.public:
                raise PrivateStateError(f"private key for node {x} does not match the tree")

    def prune(self, tree: RatchetTree) -> None:
        """Forget keys whose node was blanked or replaced (§7.5: delete outdated keys)."""
        for x in list(self.keys):
            node = tree.node(x) if x < tree.width else None
            if node is None or node.encryption_key != self.keys[x].public:
                del self.keys[x]


# --- committer side --------------------------------------------------------------------


@dataclass
class OwnUpdatePath:
    """A committer's fresh path, already merged into its tree.

    ``path_secrets`` map each node of the filtered direct path to its path
    secret (used to encrypt, and for Welcome's ``path_secret`` to new members,
    §12.4.3.1); ``keys`` are the committer's private keys after the commit.
    """
    sender: int
    leaf_node: LeafNode
    path_secrets: dict[int, bytes]
    public_keys: list[bytes]
    commit_secret: bytes
    keys: PrivateTreeKeys

    def encrypt(self, tree: RatchetTree, group_context: bytes,
                exclude: Iterable[int] = ()) -> UpdatePath:
        """The UpdatePath: each path secret encrypted to the copath child's
        resolution without the ``exclude``d (newly added) leaves (§7.5, §7.6)."""
        skip = {2 * leaf for leaf in exclude}
        nodes = []
        for (p, c), pub in zip(tree.filtered_path_pairs(self.sender), self.public_keys):
            secret = self.path_secrets[p]
            cts = [crypto.encrypt_with_label(tree.node(x).encryption_key, PATH_LABEL,
                                             group_context, secret)
                   for x in tree.resolution(c) if x not in skip]
            nodes.append(UpdatePathNode(pub, cts))
        return UpdatePath(self.leaf_node, nodes)

    def path_secret_for(self, tree: RatchetTree, leaf_index: int) -> bytes | None:
        """The path secret a new member at ``leaf_index`` gets in its Welcome:
        the one of the lowest common ancestor on the filtered path (§12.4.3.1)."""
        for p, _c in tree.filtered_path_pairs(self.sender):
            if tm.is_ancestor(p, 2 * leaf_index):
                return self.path_secrets[p]
        return None


def create_update_path(tree: RatchetTree, sender: int, leaf_template: LeafNode,
                       signer: crypto.SigningKey | bytes, group_id: bytes, *,
                       leaf_key: crypto.HpkeKeyPair | None = None,
                       first_path_secret: bytes | None = None,
                       keys: PrivateTreeKeys | None = None) -> OwnUpdatePath:
    """Refresh ``sender``'s leaf and filtered direct path, merging the result into ``tree``.

    ``leaf_template`` gives the new leaf's signature key, credential,
    capabilities and extensions; its encryption key, source (``commit``),
    parent hash and signature are set here (§7.5 step 4). ``tree`` must
    already have the Commit's proposals applied. ``leaf_key`` and
    ``first_path_secret`` default to fresh randomness. ``keys`` (the
    sender's previous private keys) are updated and returned in the result.
    """
    pairs = tree.filtered_path_pairs(sender)
    leaf_key = leaf_key or crypto.HpkeKeyPair.generate()
    secret = first_path_secret or crypto.random_bytes(crypto.NH)
    path_secrets: dict[int, bytes] = {}
    node_keys: dict[int, crypto.HpkeKeyPair] = {}
    for p, _c in pairs:
        path_secrets[p] = secret
        node_keys[p] = node_key_pair(secret)
        secret = next_path_secret(secret)
    # One "path" step past the last path secret (§12.4.1); with an empty
    # filtered direct path (a group of one) it is simply a fresh random secret.
    commit_secret = secret
    public_keys = [node_keys[p].public for p, _c in pairs]
    _nodes, leaf_parent_hash = tree.path_parent_nodes(sender, public_keys)
    leaf = replace(leaf_template, encryption_key=leaf_key.public,
                   leaf_node_source=LeafNodeSource.commit, lifetime=None,
                   parent_hash=leaf_parent_hash, signature=b"")
    leaf = sign_leaf_node(leaf, signer, group_id, sender)
    tree.apply_update_path(sender, UpdatePath(leaf, [UpdatePathNode(k, []) for k in public_keys]))
    own_keys = keys.copy() if keys is not None else PrivateTreeKeys(sender)
    own_keys.keys.update(node_keys)
    own_keys.keys[2 * sender] = leaf_key
    own_keys.prune(tree)
    return OwnUpdatePath(sender, leaf, path_secrets, public_keys, commit_secret, own_keys)


# --- receiver side ------------------------------------------------------------------------


def check_update_path_shape(tree: RatchetTree, sender: int, path: UpdatePath,
                            exclude: Iterable[int] = ()) -> list[tuple[int, int]]:
    """§7.6: one UpdatePathNode per node of ``sender``'s filtered direct path,
    each with exactly one ciphertext per node of its copath child's
    resolution without the ``exclude``d (newly added) leaves.

    This needs no private key, so the Delivery Service checks it too: a
    Commit that some members could not decrypt is refused by all. Returns
    the (path node, copath child) pairs; raises :class:`UpdatePathError`.
    """
    pairs = tree.filtered_path_pairs(sender)
    if len(pairs) != len(path.nodes):
        raise UpdatePathError(
            f"UpdatePath has {len(path.nodes)} nodes, the filtered direct path {len(pairs)}")
    skip = {2 * leaf for leaf in exclude}
    for (p, c), node in zip(pairs, path.nodes):
        expected = sum(1 for x in tree.resolution(c) if x not in skip)
        if len(node.encrypted_path_secret) != expected:
            raise UpdatePathError(f"UpdatePath node for {p} has {len(node.encrypted_path_secret)} "
                                  f"ciphertexts for a resolution of {expected} nodes")
    return pairs


@dataclass
class ReceivedPath:
    """What a receiver learns from an UpdatePath (§7.5 "decrypts the path secrets")."""
    node: int             # the filtered-path node whose path secret it decrypted
    path_secret: bytes    # that path secret
    commit_secret: bytes


def decrypt_update_path(tree: RatchetTree, keys: PrivateTreeKeys, sender: int,
                        path: UpdatePath, group_context: bytes,
                        exclude: Iterable[int] = ()) -> ReceivedPath:
    """Decrypt ``path`` from ``sender`` with a member's ``keys`` (§7.5).

    ``tree`` is the receiver's tree with the Commit's proposals applied (the
    UpdatePath may already be merged: copath subtrees are the same either
    way). Finds the filtered-path node whose copath child covers the
    receiver, decrypts its path secret with the key the receiver holds in
    that child's resolution, derives the secrets above it, checks every
    derived public key against the UpdatePath, and updates ``keys`` (in
    place: old keys on the sender's direct path are dropped, new ones
    added). Raises :class:`UpdatePathError`.
    """
    me = 2 * keys.leaf_index
    if keys.leaf_index == sender:
        raise UpdatePathError("a member does not decrypt its own UpdatePath")
    pairs = check_update_path_shape(tree, sender, path, exclude)
    start = next((i for i, (_p, c) in enumerate(pairs) if tm.is_ancestor(c, me)), None)
    if start is None:
        raise UpdatePathError("the receiver is not below the sender's filtered direct path")
    skip = {2 * leaf for leaf in exclude}
    _p, c = pairs[start]
    resolution = [x for x in tree.resolution(c) if x not in skip]
    cts = path.nodes[start].encrypted_path_secret
    holder = next((i for i, x in enumerate(resolution) if x in keys.keys), None)
    if holder is None:
        raise UpdatePathError("the receiver holds no key in the copath resolution")
    ct = cts[holder]
    try:
        secret = crypto.decrypt_with_label(keys.keys[resolution[holder]].private, PATH_LABEL,
                                           group_context, ct.kem_output, ct.ciphertext)
    except crypto.CryptoError as e:
        raise UpdatePathError("cannot decrypt the path secret") from e
    first_node, first_secret = pairs[start][0], secret
    new_keys: dict[int, crypto.HpkeKeyPair] = {}
    for (p, _c), upn in zip(pairs[start:], path.nodes[start:]):
        pair = node_key_pair(secret)
        if pair.public != upn.encryption_key:
            raise UpdatePathError(f"public key of node {p} does not match its path secret")
        new_keys[p] = pair
        secret = next_path_secret(secret)
    for x in tm.direct_path(2 * sender, tree.n_leaves):
        keys.keys.pop(x, None)
    keys.keys.update(new_keys)
    return ReceivedPath(first_node, first_secret, secret)


__all__ = [
    "TreeKemError", "UpdatePathError", "PrivateStateError", "next_path_secret",
    "node_key_pair", "hpke_pair_from_private", "PrivateTreeKeys",
    "OwnUpdatePath", "create_update_path", "ReceivedPath", "check_update_path_shape",
    "decrypt_update_path",
]
