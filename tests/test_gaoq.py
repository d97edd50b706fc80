"""GAOQ (ReSID): anchors, alignment, balance, collision-free codes, branching rule."""

import math

import numpy as np
import pytest

from sidkit.errors import DataError
from sidkit.tokenizers.base import Tokenizer
from sidkit.tokenizers.gaoq import GAOQ, auto_branching, make_anchors


def _clustered(n=3000, d=32, k=30, seed=0):
    centers = np.random.default_rng(0).normal(size=(k, d)).astype(np.float32) * 2.0
    rs = np.random.default_rng(seed)  # new items from the same clusters
    return (centers[rs.integers(0, k, n)] + 0.5 * rs.normal(size=(n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
    X = _clustered()
    return X, GAOQ(device="cpu").fit(X)


def test_anchors_orthonormal():
    for d, g in [(32, 14), (32, 32), (128, 100)]:
        A = make_anchors(d, g, 3)
        assert A.shape == (g, d)
        np.testing.assert_allclose(A @ A.T, np.eye(g), atol=1e-5)
    A = make_anchors(8, 20, 3)  # g > d: unit norm, approximately orthogonal
    np.testing.assert_allclose(np.linalg.norm(A, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(A[:8] @ A[:8].T, np.eye(8), atol=1e-5)
    np.testing.assert_array_equal(make_anchors(16, 5, 1), make_anchors(16, 5, 1))


def test_fitted_anchors_orthonormal(fitted):
    _, m = fitted
    for l in range(len(m.branching_)):
        A = m.anchors(l).astype(np.float64)
        np.testing.assert_allclose(A @ A.T, np.eye(len(A)), atol=1e-5)


def test_collision_free_and_balanced(fitted):
    X, m = fitted
    c = m.encode(X)
    assert c.collision_rule == "by_construction" and not c.has_collisions()
    np.testing.assert_array_equal(c.codes, m.codes_)
    assert c.params["branching"] == [int(b) for b in m.branching_]
    b1 = int(m.branching_[0])
    sizes = np.bincount(c.codes[:, 0], minlength=b1)
    t = len(X) / b1
    assert sizes.min() >= math.floor(0.9 * t) and sizes.max() <= math.ceil(1.1 * t)
    for p in range(b1):  # level 2: balanced inside every parent
        kids = np.bincount(c.codes[c.codes[:, 0] == p, 1])
        kids = kids[kids > 0]
        t2 = sizes[p] / kids.size
        assert kids.min() >= math.floor(0.9 * t2) and kids.max() <= math.ceil(1.1 * t2)
    # last level enumerates each leaf: b_L >= ceil(N / prod(b)) and covers every leaf
    assert m.codebook_sizes_[-1] >= math.ceil(len(X) / np.prod(m.branching_))
    assert c.codes[:, -1].max() < m.codebook_sizes_[-1]


def test_decode_reconstructs_from_the_tree(fitted):
    X, m = fitted
    c = m.encode(X)
    Xh = m.decode(c)
    rel = ((Xh - X) ** 2).sum() / ((X - X.mean(0)) ** 2).sum()
    assert 0.0 < rel < 0.5  # a reconstruction, not the stored item
    # a SID decodes to its leaf centroid: the last token (leaf enumeration) is ignored
    q = c.codes.copy()
    q[:, -1] = 0
    np.testing.assert_array_equal(m.decode(q), Xh)
    leaf_mean = X[(c.codes[:, :-1] == c.codes[0, :-1]).all(1)].mean(0)
    np.testing.assert_allclose(Xh[0], leaf_mean, atol=0.6)  # balanced leaf ~ its centroid
    # finer levels help: the level-1 centroid alone reconstructs worse
    top = m.node_centroids_[np.flatnonzero(m.node_level_ == 0)]
    X1 = top[np.argsort(m.node_token_[m.node_level_ == 0])][c.codes[:, 0]]
    assert ((X1 - X) ** 2).sum() > 1.2 * ((Xh - X) ** 2).sum()


def test_state_holds_no_catalogue_embeddings(tmp_path):
    import os

    sizes = {}
    for d in (16, 128):
        X = _clustered(n=1500, d=d)
        m = GAOQ(device="cpu").fit(X)
        m.save(tmp_path / str(d))
        from safetensors.numpy import load_file

        state = load_file(str(tmp_path / str(d) / "state.safetensors"))
        assert not any(v.ndim == 2 and v.shape == (1500, d) for v in state.values())
        assert not any(v.size >= 1500 * d for v in state.values())
        sizes[d] = os.path.getsize(tmp_path / str(d) / "state.safetensors")
        per_dim_rows = m.node_centroids_.shape[0] + m.anchors_.shape[0] + 2 + 8
        assert m.catalogue_prints_.shape == (1500, 8)
    # growth with d comes from the tree (nodes, anchors, projection), not from N x d
    assert sizes[128] - sizes[16] <= per_dim_rows * 112 * 4 + 4096
    assert sizes[128] - sizes[16] < 1500 * 112 * 4 / 4


def test_noise_does_not_reroute_catalogue_items():
    """GAOQ matched catalogue rows by a hash of their bytes: X + 1e-6 re-routed items
    (its balanced fit puts some items outside their nearest leaf) and gave shared SIDs."""
    X = _clustered(n=2000, d=64)
    m = GAOQ(device="cpu").fit(X)
    c = m.encode(X).codes
    for noisy in (X + np.float32(1e-6), X * np.float32(1 + 1e-6)):
        np.testing.assert_array_equal(m.encode(noisy).codes, c)
    assert len(np.unique(c, axis=0)) == 2000


def test_token_means_same_direction_under_every_parent(fitted):
    _, m = fitted
    lvl = m.node_level_
    for l in range(len(m.branching_)):
        nodes = np.flatnonzero(lvl == l)
        par = m.node_parent_[nodes]
        pc = np.where(par[:, None] >= 0, m.node_centroids_[np.maximum(par, 0)], m.root_[None])
        D = m.node_centroids_[nodes] - pc
        D /= np.linalg.norm(D, axis=1, keepdims=True)
        A = m.anchors(l)
        matched = (D * A[m.node_token_[nodes]]).sum(1)
        shuffled = (D * A[np.random.default_rng(0).permutation(m.node_token_[nodes])]).sum(1)
        # every parent's children are on average positively aligned with their anchor
        per_parent = [matched[par == p].mean() for p in np.unique(par)]
        assert min(per_parent) > 0
        assert matched.mean() > 0.1 and matched.mean() > shuffled.mean() + 0.1
        assert m.alignment_[l]["matched_cosine"] > m.alignment_[l]["random_anchor_cosine"] + 0.1


def test_auto_branching_rule():
    for n in [200, 1000, 24_000, 100_000, 500_000]:
        b = auto_branching(n)
        assert len(b) == 2 and n / 20 <= b[0] * b[1] <= n / 10, (n, b)
    assert len(auto_branching(50_000, n_levels=4)) == 3
    m = GAOQ(device="cpu").fit(_clustered(n=400, d=8))
    assert tuple(m.branching_) == auto_branching(400)


def test_unseen_items_and_save_load(fitted, tmp_path):
    X, m = fitted
    new = _clustered(n=200, seed=7)
    c = m.encode(new)
    assert c.params["n_unseen"] == 200 and c.collision_rule == "by_construction"
    assert c.codes.shape == (200, 3) and (c.codes >= 0).all()
    # an unseen item gets the next free number of its leaf: no catalogue item's SID
    both = np.concatenate([m.codes_, c.codes])
    assert len(np.unique(both, axis=0)) == len(both)
    leaf_size = np.array([((m.codes_[:, :-1] == row[:-1]).all(1)).sum() for row in c.codes])
    assert (c.codes[:, -1] >= leaf_size).all()
    err = ((m.decode(c) - new) ** 2).mean()  # decodes to its leaf centroid
    assert err < 0.5 * ((new - X.mean(0)) ** 2).mean()
    # mixing seen and unseen rows keeps the training SIDs
    mixed = m.encode(np.concatenate([X[:10], new[:5]]))
    np.testing.assert_array_equal(mixed.codes[:10], m.codes_[:10])
    m.save(tmp_path / "g")
    m2 = Tokenizer.load(tmp_path / "g")
    np.testing.assert_array_equal(m2.encode(new).codes, c.codes)
    np.testing.assert_array_equal(m2.encode(X).codes, m.codes_)
    # a prefix-only / unknown-leaf SID decodes to a centroid on its path
    q = c.codes.copy()
    q[:, -1] = m.codebook_sizes_[-1] - 1
    assert np.isfinite(m2.decode(q)).all()


def test_small_parents_and_explicit_branching():
    X = _clustered(n=60, d=8, k=5)
    m = GAOQ(branching=[4, 30], device="cpu").fit(X)  # parents hold ~15 < 30 items
    c = m.encode(X)
    assert not c.has_collisions()
    assert m.codebook_sizes_[1] == 30  # g_2 = b_2 anchors, fewer children used
    with pytest.raises(DataError, match=r"branching b_1=100 exceeds the number of items \(60\)"):
        GAOQ(branching=[100, 2]).fit(X)
    with pytest.raises(DataError, match=r"branching \[2, 2\] gives 3 levels but n_levels=4"):
        GAOQ(branching=[2, 2], n_levels=4).fit(X)
    with pytest.raises(DataError, match=r"2-D .* got 1-D shape \(10,\)"):
        GAOQ().fit(np.zeros((10,)))
    with pytest.raises(DataError, match="X has 3 features but the tokenizer was fitted on 8"):
        m.encode(np.zeros((2, 3), np.float32))
    with pytest.raises(DataError, match=r"n_anchors \[2, 2\] must have one entry >= b_l .*branching \[4, 4\]"):
        GAOQ(n_anchors=[2, 2], branching=[4, 4]).fit(X)


def test_deterministic():
    X = _clustered(n=500, d=16)
    a = GAOQ(random_state=3, device="cpu").fit(X)
    b = GAOQ(random_state=3, device="cpu").fit(X)
    np.testing.assert_array_equal(a.codes_, b.codes_)
    np.testing.assert_array_equal(a.anchors_, b.anchors_)


def test_batched_balanced_kmeans_groups_of_different_sizes():
    import torch

    from sidkit.tokenizers.gaoq import batched_balanced_kmeans

    rs = np.random.default_rng(0)
    counts = np.array([50, 80, 33])
    m, d, k = counts.max(), 6, 5
    Xp = np.zeros((3, m, d), np.float32)
    valid = np.arange(m)[None, :] < counts[:, None]
    Xp[valid] = rs.normal(size=(counts.sum(), d)) + rs.integers(0, 3, (counts.sum(), 1)) * 3.0
    C, lab = batched_balanced_kmeans(torch.from_numpy(Xp), torch.from_numpy(valid), k, tol=0.1)
    C, lab = C.numpy(), lab.numpy()
    assert C.shape == (3, k, d) and (lab[~valid] == -1).all()
    for p, n in enumerate(counts):
        sizes = np.bincount(lab[p, :n], minlength=k)
        t = n / k
        assert sizes.min() >= min(math.floor(t), math.ceil(0.9 * t))
        assert sizes.max() <= max(math.ceil(t), math.floor(1.1 * t))
        # centroids are the means of their members
        for c in range(k):
            np.testing.assert_allclose(C[p, c], Xp[p, :n][lab[p, :n] == c].mean(0), atol=1e-4)


def test_state_of_an_older_version_is_a_clear_error(tmp_path):
    """Older GAOQ states stored the catalogue embeddings and codes_: re-fit, no traceback."""
    from safetensors.numpy import load_file, save_file

    from sidkit.errors import ArtifactError

    X = _clustered(n=200, d=8)
    m = GAOQ(device="cpu").fit(X)
    m.save(tmp_path / "g")
    state = load_file(str(tmp_path / "g" / "state.safetensors"))
    state["codes_"] = m.codes_.copy()
    state["embeddings_"] = X
    save_file(state, str(tmp_path / "g" / "state.safetensors"))
    with pytest.raises(ArtifactError, match=r"unexpected tensor\(s\) \['codes_', 'embeddings_'\]"):
        Tokenizer.load(tmp_path / "g")
