"""The ratchet tree (RFC 9420 §7) as every member and the DS see it (public state).

:class:`RatchetTree` holds the array of nodes of a full tree (§4.1, §7.7):
leaf ``i`` at node ``2i`` (a :class:`LeafNode` or blank ``None``), parent
nodes at odd indices (a :class:`ParentNode` or ``None``). It implements

* resolution and filtered direct paths (§4.1.2, §4.1.3 "Paths through a
  Ratchet Tree");
* adding, updating and removing leaves as Add / Update / Remove proposals
  apply them (§12.1.1–§12.1.3), with extending and truncating (§7.7);
* tree hashes (§7.8), cached per node: changing one node recomputes only the
  hashes on its direct path;
* parent hashes (§7.9), their verification when joining (§7.9.2), and the
  merge of an UpdatePath's public part into the tree (§7.5);
* validation of a whole tree as a joiner must do it (§12.4.3.1), including
  leaf node validation (§7.3).

Private keys are not kept here; :mod:`phoenix_ref.mls.treekem` holds them.
Nodes are immutable structs; every change goes through :meth:`RatchetTree._set`
so that the hash cache stays right.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

from dataclasses import replace

from .. import crypto
from ..codec import U8, U32, Reader, VarBytes, decode, encode, enum, optional, struct
from . import MlsError
from . import tree_math as tm
from .extensions import ExtensionError, RequiredCapabilities, check_unique, get_extension
from .messages import (
    CIPHER_SUITE_1, Capabilities, Extension, ExtensionType, LeafNode, LeafNodeSource, Lifetime, Node,
    NodeType, ParentNode, ProposalType, ProtocolVersion, RatchetTree as RatchetTreeWire, UpdatePath,
    leaf_node_tbs, select_struct, selected,
)

# --- errors ------------------------------------------------------------------------


class TreeError(MlsError):
    """Base class of ratchet tree failures."""


class TreeStructureError(TreeError):
    """The node array is not a well-formed ratchet tree (§12.4.3.3)."""


class TreeOperationError(TreeError):
    """A change cannot be applied (e.g. removing a blank leaf, §12.1.3)."""


class TreeValidationError(TreeError):
    """The tree breaks a rule a joiner checks (§12.4.3.1)."""


class TreeHashMismatch(TreeValidationError):
    """The tree hash differs from the one in the GroupContext (§12.4.3.1)."""


class ParentHashError(TreeValidationError):
    """A parent node is not parent-hash valid, or a leaf's parent_hash is wrong (§7.9.2)."""


class UnmergedLeavesError(TreeValidationError):
    """An ``unmerged_leaves`` list breaks §7.1 / §12.4.3.1."""


class DuplicateKeyError(TreeValidationError):
    """A key that must be unique in the tree appears twice (§7.3, §12.4.3.1)."""


class DuplicateSignatureKeyError(DuplicateKeyError):
    pass


class DuplicateEncryptionKeyError(DuplicateKeyError):
    pass


class LeafNodeError(TreeValidationError):
    """A LeafNode fails leaf node validation (§7.3)."""


class LeafSignatureError(LeafNodeError):
    """The LeafNode's signature does not verify (§7.3)."""


class CapabilitiesError(LeafNodeError):
    """The LeafNode lacks a capability the group needs, or uses one it does not list (§7.2, §7.3)."""


class LifetimeError(LeafNodeError):
    """A key_package LeafNode's lifetime does not contain the current time or
    is longer than :data:`MAX_LEAF_LIFETIME_SECONDS` (§7.2, §7.3)."""


class DuplicateLeafExtension(LeafNodeError):
    """The LeafNode's extension list names one type twice (§13)."""


# --- hash inputs (§7.8, §7.9) ------------------------------------------------------------


@struct
class LeafNodeHashInput:
    leaf_index: U32
    leaf_node: optional(LeafNode)


@struct
class ParentNodeHashInput:
    parent_node: optional(ParentNode)
    left_hash: VarBytes
    right_hash: VarBytes


@select_struct
class TreeHashInput:
    node_type: enum(U8, NodeType)
    leaf_node: selected("node_type", {NodeType.leaf: LeafNodeHashInput}) = None
    parent_node: selected("node_type", {NodeType.parent: ParentNodeHashInput}) = None


@struct
class ParentHashInput:
    encryption_key: VarBytes
    parent_hash: VarBytes
    original_sibling_tree_hash: VarBytes


# MLS-defined types that need not be listed in capabilities (§7.2).
DEFAULT_EXTENSION_TYPES = frozenset(int(e) for e in ExtensionType)
DEFAULT_PROPOSAL_TYPES = frozenset(int(p) for p in ProposalType)

# §7.2: "Applications MUST define a maximum total lifetime that is acceptable
# for a LeafNode". phoenix_ref creates KeyPackages valid for 90 days (plus one
# hour of clock skew, see keypackage.py) and accepts up to a year and a day,
# which admits the one-year KeyPackages of the RFC's interop vectors.
MAX_LEAF_LIFETIME_SECONDS = 366 * 24 * 3600

TreeNode = LeafNode | ParentNode | None


class RatchetTree:
    """The public ratchet tree of one group epoch.

    Build one with :meth:`from_nodes` / :meth:`from_bytes` (the
    ``ratchet_tree`` wire form) or :meth:`single` (a new group's creator).
    """

    def __init__(self, nodes: "list[TreeNode] | EncodedNodes"):
        """``nodes`` must already be a full tree (length ``2^(d+1) - 1``)."""
        self._nodes = nodes
        self._hashes: list[bytes | None] = [None] * len(nodes)
        # Occurrence counts kept up to date by _set, so that a Commit's
        # uniqueness and capability checks (§7.3) need no scan of the tree;
        # built on first use (:meth:`_counts`), None until then.
        self._enc_keys: dict[bytes, int] | None = None
        self._sig_keys: dict[bytes, int] = {}
        self._cred_types: dict[int, int] = {}

    def _counts(self) -> None:
        """Build the occurrence counts, once. The nodes of a tree restored
        with :meth:`from_encoded` give their keys without being decoded."""
        if self._enc_keys is not None:
            return
        self._enc_keys = {}
        if isinstance(self._nodes, EncodedNodes):
            for summary in self._nodes.key_summaries():
                self._count_keys(summary, 1)
        else:
            for v in self._nodes:
                self._count(v, 1)

    def _count(self, v: TreeNode, delta: int) -> None:
        if v is not None:
            self._count_keys(_key_summary(v), delta)

    def _count_keys(self, summary: "tuple[bytes, bytes | None, int | None] | None", delta: int) -> None:
        if summary is None:
            return
        enc, sig, cred_type = summary
        _bump(self._enc_keys, enc, delta)
        if sig is not None:
            _bump(self._sig_keys, sig, delta)
            _bump(self._cred_types, cred_type, delta)

    def encryption_key_in_use(self, key: bytes) -> bool:
        """Whether some node of the tree has this encryption key."""
        self._counts()
        return key in self._enc_keys

    def signature_key_count(self, key: bytes) -> int:
        """How many leaves have this signature key."""
        self._counts()
        return self._sig_keys.get(key, 0)

    def credential_types_in_use(self, excluding_leaf: int | None = None) -> set[int]:
        """The credential types of the members' leaves (without the one of
        ``excluding_leaf`` if no other leaf uses it)."""
        self._counts()
        types = set(self._cred_types)
        leaf = self.leaf(excluding_leaf) if excluding_leaf is not None else None
        if leaf is not None and self._cred_types.get(int(leaf.credential.credential_type)) == 1:
            types.discard(int(leaf.credential.credential_type))
        return types

    # --- construction and serialization ----------------------------------------------

    @classmethod
    def single(cls, leaf: LeafNode) -> "RatchetTree":
        """A one-member tree (group creation, §11)."""
        return cls([leaf])

    @classmethod
    def from_nodes(cls, nodes: Sequence[Node | LeafNode | ParentNode | None]) -> "RatchetTree":
        """Build from the ``ratchet_tree`` node list (§12.4.3.3).

        The last node must be non-blank; the list is extended with blanks to
        the next full width. Leaves must sit at even, parents at odd indices.
        Raises :class:`TreeStructureError`.
        """
        values = [n.value if isinstance(n, Node) else n for n in nodes]
        if not values or values[-1] is None:
            raise TreeStructureError("the last node of a ratchet_tree must be non-blank")
        for x, v in enumerate(values):
            want = LeafNode if tm.is_leaf(x) else ParentNode
            if v is not None and not isinstance(v, want):
                raise TreeStructureError(f"node {x} must be a {want.__name__}")
        width = 1
        while width < len(values):
            width = 2 * width + 1
        return cls(values + [None] * (width - len(values)))

    @classmethod
    def of(cls, tree: "RatchetTree | bytes") -> "RatchetTree":
        """An independent tree from a tree (copied) or its ``ratchet_tree`` encoding (decoded)."""
        return tree.copy() if isinstance(tree, RatchetTree) else cls.from_bytes(bytes(tree))

    @classmethod
    def from_bytes(cls, data: bytes) -> "RatchetTree":
        """Decode ``optional<Node> ratchet_tree<V>``; raises DecodeError or TreeStructureError."""
        return cls.from_nodes(decode(RatchetTreeWire, data))

    def _end(self) -> int:
        """The number of nodes without trailing blanks (§12.4.3.3)."""
        end = len(self._nodes)
        while end > 0 and self._blank(end - 1):
            end -= 1
        return end

    def to_values(self) -> list[TreeNode]:
        """The LeafNode / ParentNode / None of every node, without trailing blanks (§12.4.3.3)."""
        return self._nodes[:self._end()]

    def to_nodes(self) -> list[Node | None]:
        """The ``ratchet_tree`` node list, without trailing blanks (§12.4.3.3)."""
        return [None if v is None else Node.of(v) for v in self.to_values()]

    def to_bytes(self) -> bytes:
        return encode(self.to_nodes(), RatchetTreeWire)

    def copy(self) -> "RatchetTree":
        """An independent tree (nodes are immutable; the hash cache is kept)."""
        self._counts()   # built once here rather than by each copy
        other = RatchetTree.__new__(RatchetTree)
        other._nodes = self._nodes.copy()
        other._hashes = list(self._hashes)
        other._enc_keys = dict(self._enc_keys)
        other._sig_keys = dict(self._sig_keys)
        other._cred_types = dict(self._cred_types)
        return other

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RatchetTree) and list(self._nodes) == list(other._nodes)

    # --- a holder that stores the tree node by node (the DS) ----------------------------

    @classmethod
    def from_encoded(cls, entries: Sequence[bytes | None], node_hashes: bytes = b"") -> "RatchetTree":
        """A tree from the encoded ``Node`` of each node (None for a blank),
        as :meth:`to_encoded` gave them, with the hash cache of
        :meth:`node_hashes`. Nodes are decoded when first read
        (:class:`EncodedNodes`): a request that reads a dozen nodes of a
        large tree decodes a dozen. The caller vouches that the entries are
        those of a valid tree (they are not checked, not even decoded)."""
        items = list(entries)
        width = 1
        while width < len(items):
            width = 2 * width + 1
        tree = cls(EncodedNodes(items + [None] * (width - len(items))))
        tree.restore_node_hashes(node_hashes)
        return tree

    def to_encoded(self, encode_node=None) -> list[bytes | None]:
        """The encoded ``Node`` of every node (None for a blank), without
        trailing blanks: those of :meth:`from_encoded` that were not changed
        are given back as they came, the others are encoded by
        ``encode_node(value)`` (by default ``encode(Node.of(value))``)."""
        encode_node = encode_node or _encode_node
        end = self._end()
        if isinstance(self._nodes, EncodedNodes):
            return self._nodes.encoded(end, encode_node)
        return [None if v is None else encode_node(v) for v in self._nodes[:end]]

    # --- access ------------------------------------------------------------------------

    @property
    def n_leaves(self) -> int:
        return (len(self._nodes) + 1) // 2

    @property
    def width(self) -> int:
        return len(self._nodes)

    @property
    def root(self) -> int:
        return tm.root(self.n_leaves)

    def node(self, x: int) -> TreeNode:
        return self._nodes[x]

    def leaf(self, leaf_index: int) -> LeafNode | None:
        """The LeafNode at ``leaf_index``, or None if blank or outside the tree."""
        if not 0 <= leaf_index < self.n_leaves:
            return None
        return self._nodes[2 * leaf_index]

    def parent_node(self, x: int) -> ParentNode | None:
        if tm.is_leaf(x):
            raise TreeOperationError(f"node {x} is a leaf")
        return self._nodes[x]

    def leaves(self) -> Iterator[tuple[int, LeafNode]]:
        """(leaf index, LeafNode) for every non-blank leaf, left to right."""
        for i in range(self.n_leaves):
            leaf = self._nodes[2 * i]
            if leaf is not None:
                yield i, leaf

    def leaf_indices(self) -> list[int]:
        """The indices of the non-blank leaves, left to right (none is decoded)."""
        return [i for i in range(self.n_leaves) if not self._blank(2 * i)]

    def member_count(self) -> int:
        return len(self.leaf_indices())

    def _blank(self, x: int) -> bool:
        """Whether node ``x`` is blank (without decoding it)."""
        nodes = self._nodes
        return nodes.is_blank(x) if isinstance(nodes, EncodedNodes) else nodes[x] is None

    def _set(self, x: int, value: TreeNode) -> None:
        """Every node change goes here: it drops the cached hashes of ``x`` and its ancestors."""
        if self._enc_keys is not None:
            self._count(self._nodes[x], -1)
            self._count(value, 1)
        self._nodes[x] = value
        self._hashes[x] = None
        for p in tm.direct_path(x, self.n_leaves):
            if self._hashes[p] is None:
                break  # ancestors of an uncached node are uncached too
            self._hashes[p] = None

    def set_leaf(self, leaf_index: int, leaf: LeafNode | None) -> None:
        self._check_leaf_index(leaf_index)
        self._set(2 * leaf_index, leaf)

    def set_parent(self, x: int, node: ParentNode | None) -> None:
        if tm.is_leaf(x) or not 0 <= x < self.width:
            raise TreeOperationError(f"node {x} is not a parent node of this tree")
        self._set(x, node)

    def _check_leaf_index(self, leaf_index: int) -> None:
        if not 0 <= leaf_index < self.n_leaves:
            raise TreeOperationError(f"leaf index {leaf_index} outside a tree of {self.n_leaves} leaves")

    # --- resolution and paths (§4.1) ---------------------------------------------------

    def resolution(self, x: int) -> list[int]:
        """Node indices covering the non-blank descendants of ``x`` (§4.1.2)."""
        # Iterative, left to right, carrying each node's level (the children
        # of node y at level k > 0 are y -/+ 2^(k-1)); leaves are not decoded.
        nodes, found = self._nodes, []
        stack = [(x, tm.level(x))]
        while stack:
            y, k = stack.pop()
            if k == 0:
                if not self._blank(y):
                    found.append(y)
                continue
            v = nodes[y]
            if v is not None:
                found.append(y)
                found.extend(2 * leaf for leaf in v.unmerged_leaves)
            else:
                half = 1 << (k - 1)
                stack.append((y + half, k - 1))
                stack.append((y - half, k - 1))
        return found

    def _has_nonblank(self, x: int) -> bool:
        """Whether the resolution of ``x`` is not empty (stops at the first non-blank node)."""
        stack = [(x, tm.level(x))]
        while stack:
            y, k = stack.pop()
            if not self._blank(y):
                return True
            if k:
                half = 1 << (k - 1)
                stack.append((y + half, k - 1))
                stack.append((y - half, k - 1))
        return False

    def direct_path(self, leaf_index: int) -> list[int]:
        return tm.direct_path(2 * leaf_index, self.n_leaves)

    def copath(self, leaf_index: int) -> list[int]:
        return tm.copath(2 * leaf_index, self.n_leaves)

    def filtered_direct_path(self, leaf_index: int) -> list[int]:
        """The direct path without nodes whose copath child has an empty resolution (§4.1.3)."""
        self._check_leaf_index(leaf_index)
        return [p for p, c in self.filtered_path_pairs(leaf_index)]

    def filtered_path_pairs(self, leaf_index: int) -> list[tuple[int, int]]:
        """(direct path node, its copath child) for the filtered direct path."""
        x, n = 2 * leaf_index, self.n_leaves
        return [(p, c) for p, c in zip(tm.direct_path(x, n), tm.copath(x, n))
                if self._has_nonblank(c)]

    # --- extend / truncate and the proposals (§7.7, §12.1) --------------------------------

    def extend(self) -> None:
        """Double the number of leaves with a blank right subtree (§7.7)."""
        # Existing nodes keep their indices and subtrees, so their cached hashes stay valid.
        extra = len(self._nodes) + 1
        self._nodes.extend([None] * extra)
        self._hashes.extend([None] * extra)

    def truncate(self) -> None:
        """Halve the tree while its right half has no non-blank leaf (§7.7, §12.1.3)."""
        while self.n_leaves > 1:
            half = self.n_leaves // 2
            if any(not self._blank(2 * i) for i in range(half, self.n_leaves)):
                return
            width = tm.node_width(half)
            if self._enc_keys is not None:
                for v in self._nodes[width:]:
                    self._count(v, -1)
            del self._nodes[width:]
            del self._hashes[width:]

    def free_leaf_index(self) -> int:
        """Where the next Add goes: the leftmost blank leaf, or the first new one (§12.1.1)."""
        for i in range(self.n_leaves):
            if self._blank(2 * i):
                return i
        return self.n_leaves

    def add_leaf(self, leaf: LeafNode) -> int:
        """Apply an Add (§12.1.1); returns the new member's leaf index."""
        index = self.free_leaf_index()
        if index == self.n_leaves:
            self.extend()
        x = 2 * index
        for p in tm.direct_path(x, self.n_leaves):
            node = self._nodes[p]
            if node is not None:
                merged = sorted(set(node.unmerged_leaves) | {index})
                self._set(p, replace(node, unmerged_leaves=merged))
        self._set(x, leaf)
        return index

    def update_leaf(self, leaf_index: int, leaf: LeafNode) -> None:
        """Apply an Update from ``leaf_index`` (§12.1.2): new leaf, blank direct path."""
        if self.leaf(leaf_index) is None:
            raise TreeOperationError(f"leaf {leaf_index} is blank; it cannot be updated")
        self._set(2 * leaf_index, leaf)
        self.blank_direct_path(leaf_index)

    def remove_leaf(self, leaf_index: int) -> None:
        """Apply a Remove (§12.1.3): blank the leaf and its direct path, then truncate."""
        if self.leaf(leaf_index) is None:
            raise TreeOperationError(f"leaf {leaf_index} is blank or outside the tree; it cannot be removed")
        self._set(2 * leaf_index, None)
        self.blank_direct_path(leaf_index)
        self.truncate()

    def blank_direct_path(self, leaf_index: int) -> None:
        for p in self.direct_path(leaf_index):
            if self._nodes[p] is not None:
                self._set(p, None)

    # --- tree hash (§7.8) ---------------------------------------------------------------

    def tree_hash(self, x: int | None = None) -> bytes:
        """Tree hash of the subtree under ``x`` (the root by default), cached."""
        if x is None:
            x = self.root
        h = self._hashes[x]
        if h is None:
            h = self._compute_hash(x, self.tree_hash)
            self._hashes[x] = h
        return h

    def node_hashes(self) -> bytes:
        """The tree hash of every node, in node order, concatenated
        (``width * NH`` bytes; missing ones are computed). With
        :meth:`restore_node_hashes` a holder that stores the tree, like the
        DS, keeps the cache across loads."""
        self.tree_hash()
        return b"".join(self._hashes)

    def restore_node_hashes(self, data: bytes) -> bool:
        """Take the hash cache from :meth:`node_hashes` of this same tree.
        The caller vouches that ``data`` was computed from these nodes;
        data of another width is ignored (False), and hashes are computed
        again when needed."""
        nh = crypto.NH
        if len(data) != nh * len(self._nodes):
            return False
        self._hashes = [data[i:i + nh] for i in range(0, len(data), nh)]
        return True

    def _compute_hash(self, x: int, child_hash) -> bytes:
        return _node_hash(x, self._nodes[x], child_hash)

    def _tree_hash_without(self, x: int, removed: frozenset[int]) -> bytes:
        """Tree hash of ``x`` with the leaves ``removed`` blanked and dropped
        from every ``unmerged_leaves`` list (the "original" tree of §7.9)."""
        leaves = tm.subtree_leaves(x)
        if not any(leaf in leaves for leaf in removed):
            return self.tree_hash(x)
        v = self._nodes[x]
        if tm.is_leaf(x):
            v = None
        elif v is not None:
            v = replace(v, unmerged_leaves=[u for u in v.unmerged_leaves if u not in removed])
        return _node_hash(x, v, lambda c: self._tree_hash_without(c, removed))

    # --- parent hash (§7.9) ---------------------------------------------------------------

    def original_sibling_tree_hash(self, p: int, s: int) -> bytes:
        """Tree hash of ``s`` with ``p``'s unmerged leaves taken out (§7.9)."""
        node = self._nodes[p]
        return self._tree_hash_without(s, frozenset(node.unmerged_leaves))

    def parent_hash(self, p: int, s: int) -> bytes:
        """The parent hash of parent node ``p`` with copath child ``s`` (§7.9)."""
        node = self._nodes[p]
        if node is None:
            raise TreeOperationError(f"parent node {p} is blank")
        return _parent_hash(node.encryption_key, node.parent_hash, self.original_sibling_tree_hash(p, s))

    def verify_parent_hashes(self) -> None:
        """Check every non-blank parent node is parent-hash valid (§7.9.2, top down).

        For each such P exactly one descendant D must carry P's parent hash
        (with the copath child S on the other side), with D in the resolution
        of the child C on its side, and P's unmerged leaves under C being the
        rest of that resolution. Raises :class:`ParentHashError`.
        """
        for p in range(1, self.width, 2):
            node = self._nodes[p]
            if node is None:
                continue
            matches = 0
            for c, s in ((tm.left(p), tm.right(p)), (tm.right(p), tm.left(p))):
                matches += self._parent_hash_matches(p, node, c, s)
            if matches != 1:
                raise ParentHashError(
                    f"parent node {p} is not parent-hash valid ({matches} matching descendants)")

    def _parent_hash_matches(self, p: int, node: ParentNode, c: int, s: int) -> int:
        res = self.resolution(c)
        if not res:
            return 0
        under_c = tm.subtree_leaves(c)
        unmerged_c = {2 * u for u in node.unmerged_leaves if u in under_c}
        expected: bytes | None = None
        count = 0
        for d in res:
            if set(res) - {d} != unmerged_c:
                continue
            field = _parent_hash_field(self._nodes[d])
            if field is None:
                continue
            if expected is None:
                expected = self.parent_hash(p, s)
            if field == expected:
                count += 1
        return count

    # --- UpdatePath merge (§7.5, §7.9) -----------------------------------------------------

    def path_parent_nodes(self, leaf_index: int, public_keys: Sequence[bytes]
                          ) -> tuple[list[tuple[int, ParentNode]], bytes]:
        """ParentNodes for an UpdatePath along ``leaf_index``'s filtered direct path.

        ``public_keys`` are the new keys, lowest node first. Returns the
        (node index, ParentNode) pairs with their parent hashes filled in,
        computed from the root down (§7.9), and the parent hash the sender's
        new LeafNode must carry. The tree itself is not changed.
        """
        pairs = self.filtered_path_pairs(leaf_index)
        if len(pairs) != len(public_keys):
            raise TreeOperationError(
                f"UpdatePath has {len(public_keys)} nodes, the filtered direct path {len(pairs)}")
        nodes: list[tuple[int, ParentNode]] = []
        above = b""
        for (p, s), key in reversed(list(zip(pairs, public_keys))):
            node = ParentNode(key, above, [])
            nodes.append((p, node))
            # The sibling subtree is off the path and unchanged; with no unmerged
            # leaves on the new node its original tree hash is its tree hash.
            above = _parent_hash(key, above, self.tree_hash(s))
        nodes.reverse()
        return nodes, above

    def apply_update_path(self, sender: int, path: UpdatePath) -> None:
        """Merge the public part of an UpdatePath from leaf ``sender`` (§7.5).

        Blanks the sender's direct path, sets the new parent nodes on its
        filtered direct path, checks that ``path.leaf_node`` carries the
        expected parent hash (§7.9.2, raising :class:`ParentHashError`) and
        installs it. The leaf node's own validity (§7.3, incl. its signature)
        is the caller's to check with :func:`validate_leaf_node`.
        On error the tree is unchanged.
        """
        self._check_leaf_index(sender)
        if self.leaf(sender) is None:
            raise TreeOperationError(f"UpdatePath sender leaf {sender} is blank")
        nodes, leaf_ph = self.path_parent_nodes(sender, [n.encryption_key for n in path.nodes])
        leaf = path.leaf_node
        if leaf.leaf_node_source != LeafNodeSource.commit or leaf.parent_hash != leaf_ph:
            raise ParentHashError("the UpdatePath leaf node does not carry the expected parent hash")
        self.blank_direct_path(sender)
        for p, node in nodes:
            self._set(p, node)
        self._set(2 * sender, leaf)

    # --- validation (§12.4.3.1, §7.3) -------------------------------------------------------

    def validate(self, group_id: bytes, *, extensions: Sequence[Extension] = (),
                 tree_hash: bytes | None = None, now: int | None = None) -> None:
        """Check the tree as a joiner must (§12.4.3.1).

        ``extensions`` are the GroupContext extensions (for required
        capabilities), ``tree_hash`` the GroupContext's tree hash, ``now``
        the time in seconds for the RECOMMENDED lifetime check (skipped when
        None). Credentials themselves are validated by the application's AS
        rules (§5.3.1), not here. Raises a :class:`TreeValidationError`.
        """
        if tree_hash is not None and self.tree_hash() != tree_hash:
            raise TreeHashMismatch("the ratchet tree does not match the GroupContext tree hash")
        if all(self._nodes[2 * i] is None for i in range(self.n_leaves)):
            raise TreeValidationError("the tree has no member")
        # Cheap structural checks first, so that each broken rule is reported
        # as itself rather than as the parent hash failure it also causes.
        self.check_unmerged_leaves()
        self.check_unique_keys()
        in_use = self.credential_types_in_use()
        for i, leaf in self.leaves():
            validate_leaf_node(leaf, group_id=group_id, leaf_index=i, extensions=extensions,
                               credential_types_in_use=in_use, now=now)
        self.verify_parent_hashes()

    def check_unmerged_leaves(self) -> None:
        """§7.1 and §12.4.3.1: each unmerged leaf is a non-blank descendant,
        listed (sorted) in every non-blank node between it and the parent."""
        for p in range(1, self.width, 2):
            node = self._nodes[p]
            if node is None:
                continue
            ul = node.unmerged_leaves
            if any(a >= b for a, b in zip(ul, ul[1:])):
                raise UnmergedLeavesError(f"unmerged_leaves of node {p} are not sorted increasing")
            for leaf in ul:
                if leaf not in tm.subtree_leaves(p) or self._nodes[2 * leaf] is None:
                    raise UnmergedLeavesError(
                        f"unmerged leaf {leaf} of node {p} is not a non-blank descendant")
                for q in tm.direct_path(2 * leaf, self.n_leaves):
                    if q == p:
                        break
                    between = self._nodes[q]
                    if between is not None and leaf not in between.unmerged_leaves:
                        raise UnmergedLeavesError(
                            f"leaf {leaf} is unmerged at node {p} but not at node {q} below it")

    def check_unique_keys(self) -> None:
        """§7.3 / §12.4.3.1: signature keys unique among leaves, encryption keys among all nodes."""
        sig_keys: set[bytes] = set()
        for i, leaf in self.leaves():
            if leaf.signature_key in sig_keys:
                raise DuplicateSignatureKeyError(f"leaf {i} repeats another member's signature key")
            sig_keys.add(leaf.signature_key)
        enc_keys: set[bytes] = set()
        for x, v in enumerate(self._nodes):
            if v is not None:
                if v.encryption_key in enc_keys:
                    raise DuplicateEncryptionKeyError(f"node {x} repeats an encryption key")
                enc_keys.add(v.encryption_key)


def _node_hash(x: int, v: TreeNode, child_hash) -> bytes:
    """Hash(TreeHashInput) of node ``x`` holding ``v``, with ``child_hash``
    giving the children's tree hashes (§7.8)."""
    if tm.is_leaf(x):
        inp = TreeHashInput(NodeType.leaf, leaf_node=LeafNodeHashInput(x // 2, v))
    else:
        inp = TreeHashInput(NodeType.parent, parent_node=ParentNodeHashInput(
            v, child_hash(tm.left(x)), child_hash(tm.right(x))))
    return crypto.hash_(encode(inp))


def _parent_hash(encryption_key: bytes, parent_hash: bytes, original_sibling_tree_hash: bytes) -> bytes:
    """Hash(ParentHashInput) — §7.9."""
    return crypto.hash_(encode(ParentHashInput(encryption_key, parent_hash, original_sibling_tree_hash)))


def _key_summary(v: LeafNode | ParentNode) -> tuple[bytes, bytes | None, int | None]:
    """What the occurrence counts of :class:`RatchetTree` take from a node:
    its encryption key and, for a leaf, its signature key and credential type."""
    if isinstance(v, LeafNode):
        return v.encryption_key, v.signature_key, int(v.credential.credential_type)
    return v.encryption_key, None, None


def _encode_node(value: LeafNode | ParentNode) -> bytes:
    return encode(Node.of(value))


class _Encoded:
    """One node of :class:`EncodedNodes` as it was stored: its encoded
    ``Node``, decoded on first read (and then kept, also for the copies of
    the list that share this cell)."""

    __slots__ = ("data", "value")

    def __init__(self, data: bytes):
        self.data = data
        self.value: LeafNode | ParentNode | None = None

    def get(self) -> LeafNode | ParentNode:
        if self.value is None:
            self.value = decode(Node, self.data).value
        return self.value


class EncodedNodes:
    """The node array of a tree restored node by node
    (:meth:`RatchetTree.from_encoded`, the DS's stored trees): each stored
    node stays encoded until it is read, then is decoded once. A node set
    since replaces its cell, so :meth:`encoded` knows which stored encodings
    still hold. At n = 1024 opening the state decoded some 2000 nodes, the
    leaves large with their LeafCredential, for a commit that reads a
    dozen; the key counts a commit needs come from the head of each
    encoding (:meth:`key_summaries`).

    Supports what :class:`RatchetTree` does with its plain list of nodes:
    ``len``, indexing and slicing (decoding), assignment, iteration,
    ``extend``, ``del`` of a tail slice and ``copy``."""

    __slots__ = ("_items",)

    def __init__(self, entries: list[bytes | None]):
        self._items: list = [None if b is None else _Encoded(bytes(b)) for b in entries]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, x):
        if isinstance(x, slice):
            return [v.get() if type(v) is _Encoded else v for v in self._items[x]]
        v = self._items[x]
        return v.get() if type(v) is _Encoded else v

    def __setitem__(self, x: int, value: TreeNode) -> None:
        self._items[x] = value

    def __delitem__(self, x: slice) -> None:
        del self._items[x]

    def __iter__(self) -> Iterator[TreeNode]:
        return iter(self[:])

    def extend(self, values: Iterable[TreeNode]) -> None:
        self._items.extend(values)

    def copy(self) -> "EncodedNodes":
        other = EncodedNodes.__new__(EncodedNodes)
        other._items = list(self._items)
        return other

    def is_blank(self, x: int) -> bool:
        return self._items[x] is None

    def encoded(self, end: int, encode_node) -> list[bytes | None]:
        """The encoding of each of the first ``end`` nodes: the stored one if
        the node was not set since, else ``encode_node(value)``."""
        return [v if v is None else v.data if type(v) is _Encoded else encode_node(v)
                for v in self._items[:end]]

    def key_summaries(self) -> Iterator[tuple[bytes, bytes | None, int | None] | None]:
        """:func:`_key_summary` of every node, None for a blank. A stored
        node not yet decoded is not decoded for this: LeafNode and
        ParentNode both begin with ``encryption_key<V>``, a LeafNode goes on
        with ``signature_key<V>`` and its credential's ``uint16``
        credential_type (§7.2), read here from the head of the encoding."""
        for v in self._items:
            if v is None:
                yield None
            elif type(v) is _Encoded:
                if v.value is not None:
                    yield _key_summary(v.value)
                    continue
                r = Reader(v.data)
                node_type = r.take(1)[0]
                enc = r.take_prefixed()
                if node_type == NodeType.leaf:
                    yield enc, r.take_prefixed(), int.from_bytes(r.take(2), "big")
                else:
                    yield enc, None, None
            else:
                yield _key_summary(v)


def _bump(counts: dict, key, delta: int) -> None:
    n = counts.get(key, 0) + delta
    if n:
        counts[key] = n
    else:
        counts.pop(key, None)


def _parent_hash_field(v: TreeNode) -> bytes | None:
    """The ``parent_hash`` a node carries: ParentNodes and commit-sourced leaves."""
    if isinstance(v, ParentNode):
        return v.parent_hash
    if isinstance(v, LeafNode) and v.leaf_node_source == LeafNodeSource.commit:
        return v.parent_hash
    return None


# --- leaf node validation (§7.3) --------------------------------------------------------


def verify_leaf_signature(leaf: LeafNode, group_id: bytes | None, leaf_index: int | None) -> None:
    """VerifyWithLabel(signature_key, "LeafNodeTBS", LeafNodeTBS) — §7.2; raises LeafSignatureError."""
    try:
        tbs = leaf_node_tbs(leaf, group_id, leaf_index)
    except ValueError as e:
        raise LeafSignatureError(str(e)) from None
    try:
        crypto.verify_with_label(leaf.signature_key, "LeafNodeTBS", tbs, leaf.signature)
    except crypto.CryptoError:
        raise LeafSignatureError(f"bad LeafNode signature (leaf {leaf_index})") from None


def sign_leaf_node(leaf: LeafNode, signer: crypto.SigningKey | bytes,
                   group_id: bytes | None = None, leaf_index: int | None = None) -> LeafNode:
    """``leaf`` with a fresh signature over its LeafNodeTBS (§7.2)."""
    tbs = leaf_node_tbs(leaf, group_id, leaf_index)
    return replace(leaf, signature=crypto.sign_with_label(signer, "LeafNodeTBS", tbs))


def validate_leaf_node(leaf: LeafNode, *, group_id: bytes | None, leaf_index: int | None,
                       expected_source: LeafNodeSource | None = None,
                       extensions: Sequence[Extension] = (),
                       credential_types_in_use: Iterable[int] = (),
                       now: int | None = None) -> None:
    """Leaf node validation (§7.3), apart from credential validation (§5.3.1).

    * ``expected_source``: key_package (in a KeyPackage), update (in an Update),
      commit (in an UpdatePath); None accepts any (a leaf in a joined tree).
    * the signature, with ``group_id`` / ``leaf_index`` for update and commit;
    * compatibility with the group: the capabilities list MLS 1.0 and
      cipher suite 1, the GroupContext ``extensions``' required capabilities
      and every non-default GroupContext extension (§11.1, §13);
    * the credential types in use by the group must be listed in
      ``capabilities.credentials``, as must the leaf's own;
    * the leaf's extensions name each type once (§13), and its non-default
      ones are in ``capabilities.extensions``;
    * with ``now`` (seconds), a key_package leaf's lifetime must contain it
      and be at most :data:`MAX_LEAF_LIFETIME_SECONDS` long (§7.2). Without
      ``now`` lifetimes are not checked (the RFC's interop vectors carry
      unbounded ones, and §7.3 only RECOMMENDS the check on received leaves).

    Uniqueness of keys and the encryption key change of an Update are checked
    by the caller against the tree. Raises a :class:`LeafNodeError`:
    :class:`LeafSignatureError`, :class:`CapabilitiesError`,
    :class:`LifetimeError`, :class:`DuplicateLeafExtension`.
    """
    if expected_source is not None and leaf.leaf_node_source != expected_source:
        raise LeafNodeError(f"leaf_node_source is {leaf.leaf_node_source.name}, "
                            f"expected {LeafNodeSource(expected_source).name}")
    verify_leaf_signature(leaf, group_id, leaf_index)
    caps = leaf.capabilities
    if ProtocolVersion.mls10 not in caps.versions or CIPHER_SUITE_1 not in caps.cipher_suites:
        raise CapabilitiesError("the leaf does not support the group's version and cipher suite")
    if leaf.credential.credential_type not in caps.credentials:
        raise CapabilitiesError("the leaf's own credential type is not in its capabilities")
    for ct in credential_types_in_use:
        if ct not in caps.credentials:
            raise CapabilitiesError(f"credential type {ct} used in the group is not supported")
    try:
        check_unique(leaf.extensions)
    except ExtensionError as e:
        raise DuplicateLeafExtension(f"leaf extensions: {e}") from None
    check_extensions_listed((e.extension_type for e in leaf.extensions), caps, "leaf extension")
    check_group_support(leaf, extensions)
    if now is not None and leaf.lifetime is not None:
        check_lifetime(leaf.lifetime, now)


def check_lifetime(lifetime: Lifetime, now: int) -> None:
    """§7.2 / §7.3: ``not_before <= now <= not_after`` (``now`` in seconds
    since the epoch) and a total length of at most
    :data:`MAX_LEAF_LIFETIME_SECONDS`. Raises :class:`LifetimeError`."""
    if not lifetime.not_before <= now <= lifetime.not_after:
        raise LifetimeError("the current time is outside the leaf's lifetime")
    if lifetime.not_after - lifetime.not_before > MAX_LEAF_LIFETIME_SECONDS:
        raise LifetimeError(f"the lifetime is longer than {MAX_LEAF_LIFETIME_SECONDS} seconds")


def check_group_support(leaf: LeafNode, extensions: Sequence[Extension]) -> None:
    """The leaf supports the group's GroupContext extensions and required capabilities (§11.1, §13)."""
    caps = leaf.capabilities
    check_extensions_listed((e.extension_type for e in extensions), caps, "GroupContext extension")
    try:
        required = get_extension(extensions, RequiredCapabilities)
    except ExtensionError as e:
        raise TreeValidationError(str(e)) from None
    if required is None:
        return
    check_extensions_listed(required.extension_types, caps, "required extension")
    for t in required.proposal_types:
        if t not in DEFAULT_PROPOSAL_TYPES and t not in caps.proposals:
            raise CapabilitiesError(f"required proposal type {t:#06x} not supported")
    for t in required.credential_types:
        if t not in caps.credentials:
            raise CapabilitiesError(f"required credential type {t:#06x} not supported")


def check_extensions_listed(extension_types: Iterable[int], capabilities: Capabilities,
                            what: str = "extension") -> None:
    """Every non-default type of ``extension_types`` is in
    ``capabilities.extensions`` (§7.2); raises :class:`CapabilitiesError`
    naming ``what`` the type is for."""
    for t in extension_types:
        if t not in DEFAULT_EXTENSION_TYPES and t not in capabilities.extensions:
            raise CapabilitiesError(f"{what} {t:#06x} not in capabilities")


__all__ = [
    "TreeError", "TreeStructureError", "TreeOperationError", "TreeValidationError",
    "TreeHashMismatch", "ParentHashError", "UnmergedLeavesError", "DuplicateKeyError",
    "DuplicateSignatureKeyError", "DuplicateEncryptionKeyError", "LeafNodeError",
    "LeafSignatureError", "CapabilitiesError", "LifetimeError", "DuplicateLeafExtension",
    "MAX_LEAF_LIFETIME_SECONDS", "check_lifetime", "LeafNodeHashInput", "ParentNodeHashInput",
    "TreeHashInput", "ParentHashInput", "DEFAULT_EXTENSION_TYPES", "DEFAULT_PROPOSAL_TYPES",
    "RatchetTree", "EncodedNodes", "verify_leaf_signature", "sign_leaf_node", "validate_leaf_node",
    "check_group_support", "check_extensions_listed",
]
