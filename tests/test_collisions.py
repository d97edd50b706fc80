"""Collision reporting and resolution (invariants on random codes)."""

import numpy as np
import pytest

from sidkit.tokenizers.collisions import CollisionIndex, collision_stats, group_ranks, resolve_collisions
from sidkit.types import Codes


def test_group_ranks():
    assert group_ranks(np.array([5, 3, 5, 5, 3, 9])).tolist() == [0, 0, 1, 2, 1, 0]


def test_stats_hand_made():
    c = Codes(np.array([[0, 1], [0, 1], [0, 1], [1, 0], [1, 1], [1, 1]]), (2, 2))
    s = collision_stats(c)
    assert s["n_unique"] == 3
    assert s["collision_rate"] == pytest.approx(3 / 6)
    assert s["items_in_collision"] == pytest.approx(5 / 6)
    assert s["largest_group"] == 3 and s["n_colliding_sids"] == 2


def test_resolve_numbers_items_in_order():
    c = Codes(np.array([[0, 1], [1, 0], [0, 1], [0, 1]]), (2, 2), method="x")
    r = resolve_collisions(c)
    assert r.codes[:, 2].tolist() == [0, 0, 1, 2]
    assert r.codebook_sizes == (2, 2, 3) and r.collision_rule == "extra_level"
    assert r.params["base_levels"] == 2 and r.method == "x"


@pytest.mark.parametrize("seed", range(5))
def test_resolved_codes_have_no_collisions_and_decode_to_one_item(seed):
    rng = np.random.default_rng(seed)
    n, L = 2000, 3
    sizes = tuple(int(k) for k in rng.integers(2, 6, size=L))
    codes = Codes(rng.integers(0, sizes, size=(n, L)), sizes)
    assert codes.has_collisions()
    r = resolve_collisions(codes)
    assert collision_stats(r)["collision_rate"] == 0.0
    assert not r.has_collisions()
    assert (r.lookup(r.codes) == np.arange(n)).all()  # every SID maps to exactly its item
    assert np.array_equal(r.codes[:, :L], codes.codes)  # semantic part unchanged


def test_resolve_variable_length():
    c = Codes(np.array([[0, 1, -1], [0, 1, -1], [0, 1, 2], [0, 1, 2]]), (2, 2, 3), lengths=[2, 2, 3, 3])
    r = resolve_collisions(c)
    assert r.lengths.tolist() == [3, 3, 4, 4]
    assert r.codes.tolist() == [[0, 1, 0, -1], [0, 1, 1, -1], [0, 1, 2, 0], [0, 1, 2, 1]]
    assert not r.has_collisions()


def test_collision_index_new_items_get_next_free_index():
    rng = np.random.default_rng(0)
    base = Codes(rng.integers(0, 3, size=(300, 2)), (3, 3))
    idx = CollisionIndex().fit(base)
    old = idx.transform(base)
    assert np.array_equal(old.codes, resolve_collisions(base).codes[:, :3])
    new_base = Codes(np.array([[0, 0], [0, 0], [2, 1]]), (3, 3))
    new = idx.add(new_base)
    n00 = int(((base.codes[:, 0] == 0) & (base.codes[:, 1] == 0)).sum())
    assert new.codes[:2, 2].tolist() == [n00, n00 + 1]
    allc = np.concatenate([old.codes, new.codes])
    ks = tuple(max(a, b) for a, b in zip(old.codebook_sizes, new.codebook_sizes))
    assert not Codes(allc, ks).has_collisions()
    # unseen base SID starts at 0 and later additions continue after the recorded ones
    again = idx.add(new_base)
    assert again.codes[:2, 2].tolist() == [n00 + 2, n00 + 3]
    unseen = idx.add(Codes(np.array([[5, 5]]), (6, 6)))
    assert unseen.codes[0, 2] == 0
    assert idx.add(Codes(np.array([[5, 5]]), (6, 6))).codes[0, 2] == 1
