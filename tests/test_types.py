import numpy as np
import pytest

from sidkit import Codes
from sidkit.errors import DataError
from sidkit.types import PAD, Embeddings


def test_codes_pads_beyond_length_and_round_trips(tmp_path):
    c = Codes(np.array([[0, 1, 2], [0, 1, 7], [1, 0, 0]]), (2, 2, 3), lengths=[3, 2, 3],
              method="toy", params={"a": 1}, item_ids=np.array(["x", "y", "z"]))
    assert c.codes[1, 2] == PAD  # masked even though 7 was given
    assert c.to_tuples() == [(0, 1, 2), (0, 1), (1, 0, 0)]
    assert c.is_variable_length and not c.has_collisions()
    c.save(tmp_path / "codes")
    d = Codes.load(tmp_path / "codes.npz")
    np.testing.assert_array_equal(c.codes, d.codes)
    np.testing.assert_array_equal(c.lengths, d.lengths)
    assert d.codebook_sizes == (2, 2, 3) and d.method == "toy" and d.params == {"a": 1}
    assert list(d.item_ids) == ["x", "y", "z"]


def test_lookup_maps_each_sid_to_one_item_and_rejects_ambiguous():
    c = Codes(np.array([[0, 1, 2], [0, 1, 0], [1, 0, 0], [1, 0, 0]]), (2, 2, 3), lengths=[3, 2, 3, 3])
    got = c.lookup(np.array([[0, 1, 2], [0, 1, PAD], [1, 0, 0], [1, 1, 1]]))
    # (1,0,0) belongs to two items -> ambiguous -> -1; (1,1,1) unknown -> -1
    np.testing.assert_array_equal(got, [0, 1, -1, -1])
    assert c.has_collisions() and c.n_unique() == 3


def test_prefix_keys_distinguish_prefixes():
    c = Codes(np.array([[0, 1], [0, 2], [1, 1]]), (2, 3))
    k1 = c.prefix_keys(1)
    assert k1[0] == k1[1] != k1[2]
    assert len(set(c.prefix_keys(2).tolist())) == 3


@pytest.mark.parametrize("kwargs, msg", [
    (dict(codes=np.zeros(3, int), codebook_sizes=(2,)), "2-D"),
    (dict(codes=np.zeros((2, 2), int), codebook_sizes=(2,)), "codebook_sizes"),
    (dict(codes=np.array([[0, 5]]), codebook_sizes=(2, 2)), "outside"),
    (dict(codes=np.zeros((2, 2), int), codebook_sizes=(2, 2), collision_rule="magic"), "collision_rule"),
])
def test_codes_bad_input(kwargs, msg):
    with pytest.raises(DataError, match=msg):
        Codes(**kwargs)


def test_embeddings_validation_and_round_trip(tmp_path):
    e = Embeddings(np.ones((3, 4)), np.array(["a", "b", "c"]), source="test")
    e.save(tmp_path)
    f = Embeddings.load(tmp_path)
    assert f.vectors.dtype == np.float32 and f.dim == 4 and list(f.item_ids) == ["a", "b", "c"]
    bad = np.ones((3, 4))
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match="NaN or inf.*row 1"):
        Embeddings(bad, np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match="3 rows but there are 2"):
        Embeddings(np.ones((3, 4)), np.array(["a", "b"]))


def test_semantic_drops_the_disambiguation_token():
    # TIGER extra level, with a variable-length SID (item 1 has 1 semantic token + counter)
    c = Codes(np.array([[0, 1, 0], [1, 0, PAD], [0, 1, 1]]), (2, 2, 2), lengths=[3, 2, 3],
              collision_rule="extra_level")
    s = c.semantic()
    assert s.collision_rule == "none" and s.to_tuples() == [(0, 1), (1,), (0, 1)]
    assert s.codebook_sizes == (2, 2)
    g = Codes(np.array([[0, 0], [0, 1], [1, 0]]), (2, 2), collision_rule="by_construction")
    assert g.semantic().to_tuples() == [(0,), (0,), (1,)]
    plain = Codes(np.array([[0, 1]]), (2, 2))
    assert plain.semantic() is plain
    with pytest.raises(DataError, match="only its disambiguation token"):
        Codes(np.array([[0, 1]]), (2, 2), lengths=[1], collision_rule="extra_level").semantic()


def test_lookup_exact_with_8_levels_of_256():
    """prod(K_l + 1) >= 2^62: keys of the catalogue and of the queries must be comparable
    (they were ranked per array, so lookups returned other items)."""
    rng = np.random.default_rng(0)
    cat = rng.integers(0, 256, size=(2000, 8))
    cat[1000:1100] = cat[:100]  # 100 ambiguous SIDs (two items each)
    c = Codes(cat, (256,) * 8)
    assert np.prod(np.asarray(c.codebook_sizes, float) + 1) >= 2**62
    q_idx = rng.permutation(np.arange(100, 1000))[:300]
    unknown = rng.integers(0, 256, size=(50, 8))
    unknown[:, 0] = 0
    cat_first = set(map(tuple, cat.tolist()))
    unknown = unknown[[tuple(u) not in cat_first for u in unknown.tolist()]]
    q = np.concatenate([cat[q_idx], unknown, cat[:5]])
    got = c.lookup(q)
    np.testing.assert_array_equal(got[:300], q_idx)
    assert (got[300:] == -1).all()  # unknown SIDs and ambiguous ones
    # a single query, and variable lengths (a shortened SID is another SID)
    assert c.lookup(cat[1234]).tolist() == [1234]
    assert c.lookup(cat[1234], lengths=[7]).tolist() == [-1]


def test_joint_keys_comparable_across_arrays():
    from sidkit.types import joint_keys

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(300, 8))
    b = a[rng.permutation(300)]
    b[:10, 3] = (b[:10, 3] + 1) % 256  # 10 changed SIDs
    ca, cb = Codes(a, (256,) * 8), Codes(b, (256,) * 8)
    ka, kb = joint_keys([ca, cb])
    same_rows = (a[:, None, :] == b[None, :, :]).all(-1)
    np.testing.assert_array_equal(ka[:, None] == kb[None, :], same_rows)
    # small radices take the mixed-radix path and agree with prefix_keys
    small = Codes(rng.integers(0, 4, size=(20, 3)), (4, 4, 4))
    np.testing.assert_array_equal(joint_keys([small, small])[1], small.prefix_keys(3))
    other = Codes(np.array([[4, 0, 0], [0, 0, 0]]), (5, 4, 4))  # another size: still exact
    ks, ko = joint_keys([small, other])
    np.testing.assert_array_equal(ks[:, None] == ko[None, :],
                                  (small.codes[:, None] == other.codes[None]).all(-1))


def test_compare_codes_with_8_levels_of_256():
    from sidkit.diagnostics.overlap import compare_codes

    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, size=(500, 8))
    b = a.copy()
    b[:50, 7] = (b[:50, 7] + 1) % 256
    res = compare_codes(Codes(a, (256,) * 8), Codes(b, (256,) * 8))
    assert res["sid_change_rate"] == pytest.approx(0.1)
    # all 500 SIDs distinct; 450 keep theirs: O_confusion = sum_k p_a(k) p_b(k) = 450 / 500^2
    assert res["sid"]["O_confusion"] == pytest.approx(450 / 500**2)
