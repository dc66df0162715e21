"""Array-based tree math (RFC 9420 Appendix C) against tree-math.json."""

import pytest

from phoenix_ref.mls import tree_math as tm
from tests.conftest import vector_params


def _or_none(fn, *args):
    try:
        return fn(*args)
    except tm.TreeMathError:
        return None


@pytest.mark.parametrize("vector", vector_params("tree-math.json"))
def test_tree_math_vector(vector):
    n = vector["n_leaves"]
    assert tm.node_width(n) == vector["n_nodes"]
    assert tm.root(n) == vector["root"]
    for x in range(vector["n_nodes"]):
        assert _or_none(tm.left, x) == vector["left"][x]
        assert _or_none(tm.right, x) == vector["right"][x]
        assert _or_none(tm.parent, x, n) == vector["parent"][x]
        assert _or_none(tm.sibling, x, n) == vector["sibling"][x]


def test_paths_of_eight_leaf_tree():
    # Figure in RFC 9420 §4.1: leaf 0 (node 0) has direct path 1, 3, 7.
    assert tm.direct_path(0, 8) == [1, 3, 7]
    assert tm.copath(0, 8) == [2, 5, 11]
    assert tm.direct_path(7, 8) == []
    assert tm.copath(7, 8) == []
    assert list(tm.subtree_leaves(3)) == [0, 1, 2, 3]
    assert list(tm.subtree_leaves(4)) == [2]
    assert tm.common_ancestor(0, 6) == 3
    assert tm.common_ancestor(2, 12) == 7
    assert tm.is_ancestor(3, 4) and not tm.is_ancestor(3, 8) and tm.is_ancestor(5, 5)


def test_relations_outside_the_tree_are_errors():
    with pytest.raises(tm.TreeMathError):
        tm.left(4)
    with pytest.raises(tm.TreeMathError):
        tm.parent(3, 4)  # root of a 4-leaf tree
    with pytest.raises(tm.TreeMathError):
        tm.node_to_leaf(3)
