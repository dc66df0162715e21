"""Index arithmetic of the array-based ratchet tree (RFC 9420 §4.1, Appendix C).

A tree with ``n`` leaves (``n`` a power of two, §7.7: trees are always full)
is stored as an array of ``2n - 1`` nodes. Leaf ``i`` sits at node ``2i``;
parents sit at odd indices. A node's *level* is the number of trailing one
bits of its index: leaves are level 0, the root of an ``n``-leaf tree is
level ``log2(n)``. The relations below follow from the rule "parent
``01x`` has children ``00x`` and ``10x``" of Appendix C.

All functions take and return node indices unless their name says "leaf".
"""

from __future__ import annotations

from . import MlsError


class TreeMathError(MlsError):
    """A relation was asked of a node that does not have it (root's parent, leaf's child)."""


def log2(x: int) -> int:
    """Exponent of the largest power of two not above ``x`` (0 for 0)."""
    return x.bit_length() - 1 if x > 0 else 0


def level(x: int) -> int:
    """Number of trailing one bits of ``x``: 0 for leaves."""
    k = 0
    while (x >> k) & 1:
        k += 1
    return k


def is_leaf(x: int) -> bool:
    return x & 1 == 0


def node_width(n_leaves: int) -> int:
    """Number of array slots for a tree with ``n_leaves`` leaves."""
    return 0 if n_leaves == 0 else 2 * (n_leaves - 1) + 1


def node_to_leaf(x: int) -> int:
    if not is_leaf(x):
        raise TreeMathError(f"node {x} is not a leaf")
    return x // 2


def root(n_leaves: int) -> int:
    """Index of the root of a tree with ``n_leaves`` leaves."""
    return (1 << log2(node_width(n_leaves))) - 1


def left(x: int) -> int:
    k = level(x)
    if k == 0:
        raise TreeMathError(f"leaf node {x} has no children")
    return x ^ (1 << (k - 1))


def right(x: int) -> int:
    k = level(x)
    if k == 0:
        raise TreeMathError(f"leaf node {x} has no children")
    return x ^ (3 << (k - 1))


def parent(x: int, n_leaves: int) -> int:
    """The parent of ``x`` in a tree of ``n_leaves`` leaves.

    With ``k = level(x)``, the parent has level ``k+1``: setting bit ``k``
    gives it, and bit ``k+1`` of ``x`` (whether ``x`` is a right child) is
    cleared so the parent sits between its two children.
    """
    if x == root(n_leaves):
        raise TreeMathError(f"root node {x} has no parent")
    if x >= node_width(n_leaves):
        raise TreeMathError(f"node {x} is outside a tree of {n_leaves} leaves")
    k = level(x)
    b = (x >> (k + 1)) & 1
    return (x | (1 << k)) ^ (b << (k + 1))


def sibling(x: int, n_leaves: int) -> int:
    """The other child of ``x``'s parent."""
    p = parent(x, n_leaves)
    return right(p) if x < p else left(p)


def direct_path(x: int, n_leaves: int) -> list[int]:
    """Ancestors of ``x`` from its parent up to and including the root (§4.1)."""
    r = root(n_leaves)
    path = []
    while x != r:
        x = parent(x, n_leaves)
        path.append(x)
    return path


def copath(x: int, n_leaves: int) -> list[int]:
    """Siblings of ``x`` and of each of its ancestors below the root (§4.1)."""
    r = root(n_leaves)
    out = []
    while x != r:
        out.append(sibling(x, n_leaves))
        x = parent(x, n_leaves)
    return out


def is_ancestor(a: int, x: int) -> bool:
    """Whether node ``a`` is ``x`` or lies above ``x`` (the subtree of ``a`` holds ``x``)."""
    k = level(a)
    return (a >> (k + 1)) == (x >> (k + 1)) and level(x) <= k


def subtree_leaves(x: int) -> range:
    """Leaf indices below node ``x`` (a contiguous range)."""
    k = level(x)
    first_node = x - ((1 << k) - 1)
    return range(first_node // 2, first_node // 2 + (1 << k))


def common_ancestor(x: int, y: int) -> int:
    """The lowest node whose subtree holds both ``x`` and ``y``."""
    lx, ly = level(x) + 1, level(y) + 1
    if lx <= ly and x >> ly == y >> ly:
        return y
    if ly <= lx and x >> lx == y >> lx:
        return x
    xn, yn, k = x, y, 0
    while xn != yn:
        xn, yn, k = xn >> 1, yn >> 1, k + 1
    return (xn << k) + (1 << (k - 1)) - 1


__all__ = [
    "TreeMathError", "log2", "level", "is_leaf", "node_width", "node_to_leaf",
    "root", "left", "right", "parent", "sibling", "direct_path", "copath", "is_ancestor",
    "subtree_leaves", "common_ancestor",
]
