"""VQ, RQ-KMeans and hierarchical k-means, plus codebook sizing."""

import numpy as np
import pytest

from sidkit.errors import DataError
from sidkit.tokenizers import HierarchicalKMeans, RQKMeans, VQ, Tokenizer, default_codebook_sizes
from sidkit.types import Codes


def data(n=600, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(12, d)) * 4
    return (centers[rng.integers(12, size=n)] + rng.normal(size=(n, d))).astype(np.float32)


def test_default_codebook_sizes():
    # study 2: 256 per level from 1,024 items up (TIGER's size), N / 4 below
    assert default_codebook_sizes(1682, 3) == (256, 256, 256)      # MovieLens-100K
    assert default_codebook_sizes(1024, 2) == (256, 256)
    assert default_codebook_sizes(1000, 4) == (256,) * 4             # 250 -> a multiple of 8
    assert default_codebook_sizes(300, 3) == (80, 80, 80)            # 75 -> 80
    assert default_codebook_sizes(60, 2) == (16, 16)
    assert default_codebook_sizes(30, 1) == (8,)                     # 7.5 -> 8
    assert default_codebook_sizes(10_000_000, 3) == (256, 256, 256)
    assert default_codebook_sizes(5, 2) == (2, 2)
    assert default_codebook_sizes(1, 2) == (1, 1)  # never more codewords than items
    assert all(2 <= k <= 256 for n in (10, 1000, 10**5) for k in default_codebook_sizes(n, 3))
    with pytest.raises(DataError):
        default_codebook_sizes(0, 3)


def test_rq_residual_mse_decreases_and_decode_is_sum():
    X = data()
    tok = RQKMeans(codebook_sizes=[8, 8, 8], random_state=0)
    codes = tok.fit_encode(X)
    mse = tok.level_mse_
    assert mse.shape == (3,) and np.all(np.diff(mse) <= 1e-6)
    rel = tok.fit_stats_["relative_mse"]
    assert rel[0] < 1.0 and rel == sorted(rel, reverse=True)
    assert len(tok.fit_stats_["perplexity"]) == 3
    assert all(1 <= p <= 8 for p in tok.fit_stats_["perplexity"])
    # decode = sum of codewords, ignoring the collision level
    c = codes.codes
    manual = sum(tok.codebooks_[l][c[:, l]] for l in range(3))
    np.testing.assert_allclose(tok.decode(codes), manual, rtol=1e-6)
    assert ((X - tok.decode(codes)) ** 2).sum(1).mean() == pytest.approx(mse[-1], rel=1e-3)
    assert codes.collision_rule == "extra_level" and not codes.has_collisions()
    assert codes.params["codebook_sizes"] == [8, 8, 8]


def test_rq_default_sizes_reported():
    X = data(n=300)
    codes = RQKMeans(n_levels=2).fit_encode(X)
    assert codes.params["codebook_sizes"] == list(default_codebook_sizes(300, 2))
    assert codes.codebook_sizes[:2] == default_codebook_sizes(300, 2)


def test_rq_balanced_and_no_collision_level():
    X = data(n=800)
    tok = RQKMeans(codebook_sizes=8, n_levels=2, balanced=True, resolve_collisions=False)
    codes = tok.fit_encode(X)
    assert codes.n_levels == 2 and codes.collision_rule == "none"
    sizes = np.bincount(codes.codes[:, 0], minlength=8)
    assert np.all(np.abs(sizes - 100) <= 10)


def test_vq_single_level():
    X = data(n=400)
    tok = VQ(codebook_size=16)
    codes = tok.fit_encode(X)
    assert codes.codebook_sizes[0] == 16 and codes.n_levels == 2
    assert tok.codebooks_.shape == (1, 16, 16)


def test_encode_new_does_not_change_existing(tmp_path):
    X = data(n=500)
    tok = RQKMeans(codebook_sizes=[4, 4], random_state=0)
    old = tok.fit_encode(X)
    new = tok.encode_new(X[:50] + 0.01)
    both = Codes(np.concatenate([old.codes, new.codes]),
                 tuple(max(a, b) for a, b in zip(old.codebook_sizes, new.codebook_sizes)))
    assert not both.has_collisions()
    assert np.array_equal(tok.encode(X).codes, old.codes)
    # the index state is saved too: recorded items keep their SIDs after load
    tok.save(tmp_path / "t")
    loaded = Tokenizer.load(tmp_path / "t")
    assert np.array_equal(loaded.encode(X[:50] + 0.01).codes, new.codes)
    again = loaded.encode_new(X[:1] + 0.02)
    assert Codes(np.concatenate([both.codes, again.codes]),
                 tuple(max(a, b) for a, b in zip(both.codebook_sizes, again.codebook_sizes))).n_unique() == 551
    # a catalogue item passed to encode_new keeps its catalogue SID
    assert np.array_equal(loaded.encode_new(X[:1]).codes, old.codes[:1])


def test_hkm_children_per_parent_and_decode_leaf():
    X = data(n=300)
    tok = HierarchicalKMeans(codebook_sizes=[4, 4, 4], random_state=0)
    codes = tok.fit_encode(X)
    base = codes.codes[:, :3]
    # every token names an existing child of its parent node in the child table ...
    table = tok.child_table_
    row = np.zeros(len(X), dtype=np.int64)  # child-table row of the parent (0 = root)
    for l in range(3):
        node = table[row, base[:, l]]
        assert (node >= 0).all()
        # ... every child of a parent holds items, and no parent has more than K children
        for r in np.unique(row):
            n_children = int((table[r] >= 0).sum())
            assert 1 <= n_children <= 4
            assert np.array_equal(np.unique(base[row == r, l]), np.arange(n_children))
        row = node + 1
    # distinct code paths <-> distinct leaf nodes
    assert len(np.unique(row)) == len(np.unique(codes.prefix_keys(3)))
    # decode = centroid of the leaf node = mean of the leaf's members
    Xh = tok.decode(codes)
    keys = codes.prefix_keys(3)
    for key in np.unique(keys)[:20]:
        m = keys == key
        np.testing.assert_allclose(Xh[m][0], X[m].mean(0), rtol=1e-4, atol=1e-4)
    assert tok.level_mse_[0] >= tok.level_mse_[1] >= tok.level_mse_[2]
    assert np.array_equal(tok.encode(X).codes, codes.codes)


def test_hkm_small_parent_gets_fewer_children():
    X = np.concatenate([np.eye(4)[:3], np.ones((50, 4)) * 10 + np.random.default_rng(0).normal(size=(50, 4))])
    tok = HierarchicalKMeans(codebook_sizes=[2, 8], resolve_collisions=False).fit(X.astype(np.float32))
    n_children = (tok.child_table_[1:3] >= 0).sum(1)
    assert sorted(n_children.tolist()) == [3, 8]  # 3 items -> 3 children, not 8


def test_dimension_mismatch():
    tok = RQKMeans(codebook_sizes=[4], n_levels=1).fit(data(n=100))
    with pytest.raises(DataError, match="dimension"):
        tok.encode(np.zeros((3, 5), dtype=np.float32))


# ------------------------------------------------------------- fast encode paths
def _hkm_encode_reference(tok, X):
    """The straightforward HKM encode: per row, the exact nearest child
    ``argmin sum((c - x)^2)`` of its current node (first on ties), level by level."""
    import torch

    cents = torch.from_numpy(tok.centroids_)
    table = torch.from_numpy(tok.child_table_)
    x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    L = len(tok.codebook_sizes_)
    out = np.empty((len(X), L), dtype=np.int64)
    row = torch.zeros(len(X), dtype=torch.int64)
    for l in range(L):
        kids = table[row]
        dist = (cents[kids.clamp(min=0)] - x[:, None, :]).square_().sum(-1)
        dist[kids < 0] = float("inf")
        tok_l = dist.argmin(1)
        out[:, l] = tok_l.numpy()
        row = kids.gather(1, tok_l[:, None]).squeeze(1) + 1
    return out


@pytest.mark.parametrize("sizes", [[6, 5, 4], [40, 3], [2, 7]])
def test_hkm_encode_matches_reference(sizes):
    X = data(n=400, d=12, seed=3)
    tok = HierarchicalKMeans(codebook_sizes=sizes, resolve_collisions=False, random_state=0).fit(X)
    rng = np.random.default_rng(1)
    # new points, training points (duplicates -> exact ties between leaf centroids)
    # and points half-way between two centroids (near-ties)
    c = tok.centroids_
    a, b = rng.integers(len(c), size=(2, 50))
    Y = np.concatenate([X, data(n=200, d=12, seed=9), X[:30], (c[a] + c[b]) / 2]).astype(np.float32)
    assert np.array_equal(tok.encode(Y).codes, _hkm_encode_reference(tok, Y))


def test_hkm_encode_node_without_children_matches_reference():
    X = data(n=300, d=8, seed=4)
    tok = HierarchicalKMeans(codebook_sizes=[4, 4, 3], resolve_collisions=False).fit(X)
    tok.child_table_[1 + tok.child_table_[0, 0]] = -1  # first level-1 node loses its children
    assert np.array_equal(tok.encode(X).codes, _hkm_encode_reference(tok, X))


def test_rq_encode_matches_residual_reference_and_rejects_nan():
    X = data(n=5000, d=16, seed=5)
    tok = RQKMeans(codebook_sizes=[16, 8, 8], resolve_collisions=False).fit(X)
    codes = tok.fit_encode(X).codes
    # reference: nearest codeword per level by brute force on the residual
    R = X.astype(np.float64)
    ref = np.empty_like(codes)
    for l in range(3):
        C = tok.codebooks_[l, :tok.codebook_sizes_[l]].astype(np.float64)
        ref[:, l] = (((R[:, None, :] - C[None]) ** 2).sum(-1)).argmin(1)
        R = R - C[ref[:, l]]
    assert (tok.encode(X).codes == codes).all()
    assert (codes == ref).mean() > 0.999  # float32 GEMM vs float64: near-ties may differ
    for bad in (np.nan, np.inf, -np.inf):
        Y = X.copy()
        Y[4321, 3] = bad
        with pytest.raises(DataError, match="row 4321"):
            tok.encode(Y)
