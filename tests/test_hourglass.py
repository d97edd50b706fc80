"""Hourglass remedies: drop a level, adaptive top-K removal (seed 002)."""

import numpy as np
import pytest

from sidkit.errors import DataError
from sidkit.tokenizers import RQKMeans
from sidkit.tokenizers.collisions import collision_stats, resolve_collisions
from sidkit.tokenizers.hourglass import choose_topk, drop_level, strip_extra_level, topk_removal
from sidkit.types import PAD, Codes


def hand_codes():
    # level-1 (middle) token 0 is the hub
    return Codes(np.array([[0, 0, 1], [0, 0, 2], [1, 0, 1], [1, 1, 1],
                           [2, 0, 3], [2, 2, 0], [0, 3, 1], [1, 0, 2]]), (3, 4, 4))


def test_topk_removal_expected_lengths_hand_made():
    codes = resolve_collisions(hand_codes())
    out, k = topk_removal(codes, level=1, k=1)
    assert k == 1
    # items with middle token 0 lose it: 3 semantic tokens -> 2, plus the extra level
    assert out.lengths.tolist() == [3, 3, 3, 4, 3, 4, 4, 3]
    assert out.codes[0].tolist() == [0, 1, 0, PAD]  # (0, _, 1) + disambiguation 0
    assert out.codes[3].tolist() == [1, 1, 1, 0]  # kept item unchanged
    assert out.codes[4].tolist() == [2, 3, 0, PAD]
    assert out.params["hourglass"]["removed_tokens"] == [0]
    assert out.params["hourglass"]["n_shortened"] == 5
    assert collision_stats(out)["collision_rate"] == 0.0
    assert (out.lookup(out.codes, out.lengths) == np.arange(8)).all()


def test_topk_removal_resolves_new_collisions():
    # (0, 0, 1) and (0, 1, 1) differ only by the removed token -> same shortened SID;
    # equal counts: ties go to the smaller token id, so tokens 0 and 1 are removed
    codes = Codes(np.array([[0, 0, 1], [0, 1, 1], [0, 2, 1]]), (1, 3, 2))
    out, _ = topk_removal(codes, level=1, k=2)
    assert out.lengths.tolist() == [3, 3, 4]
    assert out.codes[:2, 2].tolist() == [0, 1]
    assert not out.has_collisions()


def test_choose_topk_picks_hubs():
    rng = np.random.default_rng(0)
    tokens = np.concatenate([np.zeros(500, int), np.ones(400, int), rng.integers(2, 100, size=1000)])
    assert choose_topk(tokens, 100) == 2
    assert choose_topk(rng.integers(0, 50, size=5000), 50) == 0  # uniform: nothing stands out
    out, k = topk_removal(Codes(np.stack([tokens % 3, tokens, tokens % 7], 1), (3, 100, 7)), level=1)
    assert k == 2 and out.params["hourglass"]["k"] == 2
    assert (out.lengths == 3).sum() == 900  # the 900 hub items are shortened (2 + extra)


def test_drop_level():
    codes = resolve_collisions(hand_codes())
    out = drop_level(codes, 1)
    assert out.n_levels == 3 and out.codebook_sizes[:2] == (3, 4)
    assert np.array_equal(out.codes[:, :2], hand_codes().codes[:, [0, 2]])
    assert not out.has_collisions()
    assert out.params["hourglass"] == {"remedy": "drop_level", "level": 1}
    with pytest.raises(DataError, match="out of range"):
        drop_level(codes, 3)


def test_strip_and_on_tokenizer_codes():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 8)).astype(np.float32)
    codes = RQKMeans(codebook_sizes=[6, 6, 6]).fit_encode(X)
    assert np.array_equal(strip_extra_level(codes).codes, codes.codes[:, :3])
    out, k = topk_removal(codes)
    assert not out.has_collisions() and out.n_items == 500
    assert drop_level(codes, 1).n_levels == 3
