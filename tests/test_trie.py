"""The SID trie: exact structure on a hand-made case, queries, variable-length SIDs, errors."""

import numpy as np
import pytest

from sidkit.errors import DataError
from sidkit.models.sid_tokens import END, PAD, SIDTokens
from sidkit.models.trie import SIDTrie
from sidkit.types import Codes

# level offsets with 3 special tokens: level 0 -> 3..4, level 1 -> 5..7
FIXED = Codes(np.array([[0, 2], [0, 0], [1, 1]]), (2, 3))


def test_structure_of_a_small_trie():
    sid = SIDTokens(FIXED)
    assert sid.vocab_size == 3 + 2 + 3
    np.testing.assert_array_equal(sid.item_tokens, [[3, 7], [3, 5], [4, 6]])
    tr = sid.trie
    # root; depth 1: tokens 3, 4; depth 2: (3,5) (3,7) (4,6)
    np.testing.assert_array_equal(tr.depth_start, [0, 1, 3, 6])
    np.testing.assert_array_equal(tr.token, [-1, 3, 4, 5, 7, 6])
    np.testing.assert_array_equal(tr.parent, [-1, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(tr.ptr, [1, 3, 5, 6, 6, 6, 6])
    np.testing.assert_array_equal(tr.item_of_node, [-1, -1, -1, 1, 0, 2])
    rows, toks, child = tr.children([1, 0, 5])
    np.testing.assert_array_equal(rows, [0, 0, 1, 1])
    np.testing.assert_array_equal(toks, [5, 7, 3, 4])
    np.testing.assert_array_equal(child, [3, 4, 1, 2])
    mask = tr.allowed_mask([0, 2, 4])
    assert mask.shape == (3, 8)
    np.testing.assert_array_equal(np.flatnonzero(mask[0]), [3, 4])
    np.testing.assert_array_equal(np.flatnonzero(mask[1]), [6])
    assert not mask[2].any()                                       # a leaf
    np.testing.assert_array_equal(tr.next_node([0, 1, 1, 2, -1], [4, 7, 6, 6, 3]), [2, 4, -1, 5, -1])
    np.testing.assert_array_equal(tr.items_of([[3, 7], [4, 6], [4, 5], [3, 0], [7, 3]]), [0, 2, -1, -1, -1])
    np.testing.assert_array_equal(tr.sids(), sid.item_tokens)


def test_level_table_is_the_padded_child_table():
    tr = SIDTokens(FIXED).trie
    tok, node = tr.level_table(1, "cpu")
    np.testing.assert_array_equal(tok.numpy(), [[5, 7], [6, -1]])
    np.testing.assert_array_equal(node.numpy(), [[3, 4], [5, -1]])
    tok0, _ = tr.level_table(0, "cpu")
    np.testing.assert_array_equal(tok0.numpy(), [[3, 4]])


def test_variable_length_sids_end_with_the_end_token():
    # item 0: (0,) short, item 1: (0, 1), item 2: (1, 0, 2), item 3: (1,) short
    codes = Codes(np.array([[0, -1, -1], [0, 1, -1], [1, 0, 2], [1, -1, -1]]), (2, 2, 3),
                  lengths=np.array([1, 2, 3, 1]))
    sid = SIDTokens(codes)
    assert sid.variable_length and sid.n_special == 4 and sid.end_token == END
    o = sid.level_offsets
    np.testing.assert_array_equal(o, [4, 6, 8])
    np.testing.assert_array_equal(sid.item_tokens, [[4, END, PAD], [4, 7, END], [5, 6, 10], [5, END, PAD]])
    np.testing.assert_array_equal(sid.n_tokens, [2, 3, 3, 2])
    tr = sid.trie
    np.testing.assert_array_equal(tr.items_of(sid.item_tokens), [0, 1, 2, 3])
    # after the short SID (0,) END the node is terminal: no children, PAD only afterwards
    n = tr.walk([[4, END]])
    assert tr.item_of_node[n[0]] == 0 and tr.n_children[n[0]] == 0
    assert tr.items_of([[4, END, 6]])[0] == -1
    assert tr.items_of([[4, PAD, PAD]])[0] == -1                    # unfinished SID
    np.testing.assert_array_equal(np.flatnonzero(tr.allowed_mask(tr.walk([[4]]))[0]), [END, 7])
    np.testing.assert_array_equal(tr.sids(), sid.item_tokens)


def test_prefix_sid_without_end_token_is_an_error():
    with pytest.raises(DataError, match="prefix"):
        SIDTrie(np.array([[3, 0], [3, 5]]), np.array([1, 2]), 8)


def test_trie_collision_names_the_items():
    with pytest.raises(DataError, match=r"shared by items \[0, 2\]"):
        SIDTrie(np.array([[3, 5], [4, 5], [3, 5]]), np.array([2, 2, 2]), 8)


def test_trie_rejects_tokens_outside_the_vocabulary():
    with pytest.raises(DataError, match="must lie in 1..7"):
        SIDTrie(np.array([[3, 9]]), np.array([2]), 8)
