"""Seen-item masking inside the beam: excluded items are never returned, and the beam is
spent on the items that remain, so a masked list is still full."""

import numpy as np
import pytest

from sidkit.errors import DataError
from sidkit.models.beam import beam_search
from sidkit.models.sid_tokens import SIDTokens
from sidkit.models.trie import SIDTrie
from sidkit.types import Codes

from test_beam import TinyModel, _random_codes


def test_exhausted_keys_of_a_hand_made_trie():
    # items 0:(1,3) 1:(1,4) 2:(2,3) -> nodes: root 0; prefixes 1 (tok 1), 2 (tok 2); leaves 3, 4, 5
    trie = SIDTrie(np.array([[1, 3], [1, 4], [2, 3]]), np.array([2, 2, 2]), vocab_size=5)
    np.testing.assert_array_equal(trie.leaf_counts(), [3, 2, 1, 1, 1, 1])
    np.testing.assert_array_equal(trie.item_nodes(), [3, 4, 5])
    n = trie.n_nodes
    # row 0 excludes items 0 and 1 (the whole prefix 1), row 1 excludes item 0 only,
    # row 2 excludes everything (every node but the root)
    keys = trie.exhausted_keys([0, 0, 1, 2, 2, 2], [0, 1, 0, 0, 1, 2])
    np.testing.assert_array_equal(keys, [0 * n + 1, 0 * n + 3, 0 * n + 4, 1 * n + 3,
                                         2 * n + 1, 2 * n + 2, 2 * n + 3, 2 * n + 4, 2 * n + 5])
    assert trie.exhausted_keys([], []).size == 0


@pytest.mark.parametrize("variable", [False, True])
def test_full_width_beam_with_exclusion_equals_brute_force(variable):
    rs = np.random.default_rng(11 if variable else 10)
    sid = SIDTokens(_random_codes(rs, (3, 4, 3), 24, variable))
    model = TinyModel(sid.vocab_size, n_users=5, seed=4)
    ex = rs.random((5, sid.n_items)) < 0.4
    ex[0] = False                                   # one user without exclusions
    ref = np.where(ex, -np.inf, model.brute_force(sid))
    res = beam_search(model.step, model.start(), sid, 5, beam=sid.n_items, k=10, reorder=model.reorder,
                      exclude=ex)
    order = np.argsort(-ref, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(res.items, order)
    np.testing.assert_allclose(res.scores, np.take_along_axis(ref, order, 1), atol=1e-12)


def test_a_narrow_beam_skips_a_fully_seen_prefix_and_still_fills_k():
    # 4 prefixes x 4 items; the user has seen every item of the model's favourite prefix
    codes = Codes(np.array([[p, q] for p in range(4) for q in range(4)]), (4, 4))
    sid = SIDTokens(codes)
    model = TinyModel(sid.vocab_size, n_users=1, seed=7, scale=10.0)
    ref = model.brute_force(sid)[0]
    best_prefix = int(np.argmax(ref)) // 4
    ex = np.zeros((1, 16), bool)
    ex[0, best_prefix * 4:(best_prefix + 1) * 4] = True
    k = 4
    res = beam_search(model.step, model.start(), sid, 1, beam=k, k=k, reorder=model.reorder, exclude=ex)
    assert (res.items >= 0).all() and np.isfinite(res.scores).all()
    assert not ex[0, res.items[0]].any() and len(set(res.items[0].tolist())) == k
    # the beam of width k spent nothing on the excluded prefix: what it returns is at least as
    # good as filtering an unmasked beam of the same width (which would return fewer items)
    plain = beam_search(model.step, model.start(), sid, 1, beam=k, k=k, reorder=model.reorder)
    kept = [i for i in plain.items[0] if not ex[0, i]]
    assert len(kept) < k or res.scores[0, 0] >= ref[kept[0]] - 1e-12


def test_a_user_with_fewer_unseen_items_than_k_gets_minus_one_only_at_the_end():
    codes = Codes(np.array([[0, 0], [0, 1], [1, 0]]), (2, 2))
    sid = SIDTokens(codes)
    model = TinyModel(sid.vocab_size, n_users=2, seed=1)
    ex = np.array([[True, True, False], [False, False, False]])
    res = beam_search(model.step, model.start(), sid, 2, beam=3, k=3, reorder=model.reorder, exclude=ex)
    assert res.items[0].tolist() == [2, -1, -1] and not np.isfinite(res.scores[0, 1:]).any()
    assert sorted(res.items[1].tolist()) == [0, 1, 2]


def test_exclusion_bad_inputs():
    sid = SIDTokens(Codes(np.array([[0, 0], [0, 1], [1, 0]]), (2, 2)))
    model = TinyModel(sid.vocab_size, n_users=2, seed=1)
    with pytest.raises(DataError, match="exclude must be"):
        beam_search(model.step, model.start(), sid, 2, beam=3, reorder=model.reorder, exclude=np.zeros((2, 4), bool))
    with pytest.raises(DataError, match="constrained"):
        beam_search(model.step, model.start(), sid, 2, beam=3, reorder=model.reorder, constrained=False,
                    exclude=np.zeros((2, 3), bool))
