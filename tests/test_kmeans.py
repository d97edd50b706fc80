"""Exact toy tests of the k-means core."""

import numpy as np
import pytest
import torch

from sidkit.errors import DataError
from sidkit.tokenizers.kmeans import assign, imbalance_factor, kmeans


def blobs(n_per=100, k=6, d=8, sep=20.0, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * sep
    y = np.repeat(np.arange(k), n_per)
    X = centers[y] + rng.normal(size=(k * n_per, d))
    return X.astype(np.float32), y


def same_partition(a, b):
    # labels equal up to a permutation: the pairs (a, b) define a bijection
    pairs = np.unique(np.stack([a, b], 1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def test_recovers_separated_clusters_exactly():
    X, y = blobs()
    r = kmeans(X, 6, random_state=0)
    assert same_partition(r.labels, y)
    assert r.centroids.shape == (6, 8) and r.centroids.dtype == np.float32
    assert r.labels.dtype == np.int64 and r.labels.shape == (600,)
    assert r.sizes.tolist() == np.bincount(r.labels, minlength=6).tolist()
    # inertia = mean squared distance to the assigned centroid
    d2 = ((X - r.centroids[r.labels]) ** 2).sum(1)
    assert r.inertia == pytest.approx(d2.mean(), rel=1e-4)


def test_assign_matches_brute_force_and_torch_input():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1000, 16)).astype(np.float32)
    C = rng.normal(size=(37, 16)).astype(np.float32)
    lab, dist = assign(X, C, chunk_size=100)
    full = ((X[:, None, :] - C[None]) ** 2).sum(-1)
    assert (lab == full.argmin(1)).mean() > 0.999
    np.testing.assert_allclose(dist, full.min(1), rtol=1e-4, atol=1e-4)
    lab2, _ = assign(torch.from_numpy(X), C)
    assert (lab2 == lab).all()


def test_deterministic_and_restarts():
    X, _ = blobs(n_per=50, k=10, sep=1.0)
    a = kmeans(X, 10, random_state=3)
    b = kmeans(X, 10, random_state=3)
    assert (a.labels == b.labels).all() and np.array_equal(a.centroids, b.centroids)
    best = kmeans(X, 10, n_init=4, random_state=3)
    assert best.inertia <= a.inertia + 1e-6


def test_balanced_sizes_within_tolerance():
    rng = np.random.default_rng(0)
    # very unbalanced data: one dense blob and a sparse cloud
    X = np.concatenate([rng.normal(size=(1500, 8)) * 0.1, rng.normal(size=(500, 8)) * 5]).astype(np.float32)
    for k, tol in [(10, 0.1), (16, 0.05), (7, 0.0)]:
        r = kmeans(X, k, balanced=True, balance_tolerance=tol, random_state=0)
        t = len(X) / k
        assert r.sizes.sum() == len(X)
        assert np.all(np.abs(r.sizes - t) <= max(tol * t, 1.0)), (k, tol, r.sizes)
    plain = kmeans(X, 10, random_state=0)
    assert imbalance_factor(plain.sizes) > imbalance_factor(
        kmeans(X, 10, balanced=True, random_state=0).sizes)


def test_balanced_candidate_lists_path(monkeypatch):
    # large problems keep 16 candidates per point instead of the distance matrix
    import sidkit.tokenizers.kmeans as km

    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(size=(1500, 8)) * 0.1, rng.normal(size=(500, 8)) * 5]).astype(np.float32)
    full = kmeans(X, 40, balanced=True, n_iter=3, random_state=0)
    monkeypatch.setattr(km, "_FULL_D", 0)
    cand = kmeans(X, 40, balanced=True, n_iter=3, random_state=0)
    assert np.all(np.abs(cand.sizes - 50) <= 5)
    assert np.array_equal(full.labels, cand.labels)  # same greedy result either way


def test_balanced_lloyd_stops_when_labels_settle():
    # 6 equal, well separated blobs: the unconstrained warm start finds them, so the
    # balanced phase settles at once instead of running all n_iter balanced assignments
    # (outcomes only: the partition, the sizes, a fixed point, fewer iterations than allowed)
    X, y = blobs(n_per=100, k=6, d=8, sep=20.0)
    r = kmeans(X, 6, balanced=True, n_iter=20, random_state=0)
    assert same_partition(r.labels, y) and r.sizes.tolist() == [100] * 6
    assert 1 <= r.n_iter < 20, r.n_iter
    # converged: every centroid is the mean of its (balanced) members
    means = np.stack([X[r.labels == c].mean(0) for c in range(6)])
    np.testing.assert_allclose(r.centroids, means, rtol=0, atol=1e-4)
    # n_iter = 1: one (balanced) iteration, sizes still exact
    r1 = kmeans(X, 6, balanced=True, n_iter=1, random_state=0)
    assert r1.n_iter == 1 and r1.sizes.tolist() == [100] * 6


def test_balanced_with_sampling_checks_all_points():
    X, _ = blobs(n_per=300, k=4, d=4, sep=3.0)
    r = kmeans(X, 8, balanced=True, balance_tolerance=0.1, max_points_per_centroid=20)
    assert np.all(np.abs(r.sizes - 150) <= 15)


def test_empty_cluster_repair():
    # init with several centroids far away from the data -> empty at the start
    X, _ = blobs(n_per=40, k=5, d=4, sep=5.0)
    init = np.concatenate([X[:5], np.full((5, 4), 1e4, dtype=np.float32)])
    r = kmeans(X, 10, init=init, n_iter=10)
    assert (r.sizes > 0).all()
    # duplicated init centroids also get split apart
    r = kmeans(X, 10, init=np.repeat(X[:1], 10, axis=0), n_iter=10)
    assert (r.sizes > 0).all()


def test_sampling_respects_max_points_per_centroid(monkeypatch):
    import sidkit.tokenizers.kmeans as km

    seen = []
    orig = km._update_centroids

    def spy(X, labels, k, C):
        seen.append(X.shape[0])
        return orig(X, labels, k, C)

    monkeypatch.setattr(km, "_update_centroids", spy)
    X, _ = blobs(n_per=200, k=5)
    r = kmeans(X, 4, max_points_per_centroid=10, n_iter=3)
    assert seen and set(seen) == {40}
    assert r.labels.shape == (1000,) and r.sizes.sum() == 1000  # labels over all points
    seen.clear()
    kmeans(X, 4, max_points_per_centroid=None, n_iter=2)
    assert set(seen) == {1000}


def test_errors_name_problem():
    X, _ = blobs(n_per=2, k=2)
    with pytest.raises(DataError, match="more clusters than items"):
        kmeans(X, 10)
    bad = X.copy()
    bad[1, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        kmeans(bad, 2)
    with pytest.raises(DataError, match="2-D"):
        kmeans(X[0], 2)
    with pytest.raises(DataError, match="init"):
        kmeans(X, 2, init="nope")


@pytest.mark.parametrize("chunk", [1, 7, 100, 4096])
def test_encode_residual_matches_chained_assign(chunk):
    from sidkit.tokenizers.kmeans import _assign_t, encode_residual_t

    X, _ = blobs(n_per=200, k=6, d=8)
    Xt = torch.from_numpy(X)
    rng = np.random.default_rng(0)
    Cs = [torch.from_numpy(rng.normal(size=(k, 8)).astype(np.float32) * s)
          for k, s in ((16, 10.0), (5, 1.0), (9, 0.3))]
    codes, finite = encode_residual_t(Xt, Cs, chunk=chunk)
    assert finite
    r = Xt
    for l, C in enumerate(Cs):  # level by level over all rows, as the fit does
        lab, _ = _assign_t(r, C, with_dist=False)
        assert torch.equal(codes[:, l], lab)
        r = r - C[lab]
    Y = Xt.clone()
    Y[5, 2] = float("nan")
    assert not encode_residual_t(Y, Cs, chunk=chunk)[1]


def test_empty_cluster_repair_splits_the_donor():
    # one isotropic Gaussian in 64-d, the second centroid far away -> empty at the start.
    # Refilling it ON the donor's farthest point would win that point only (in high
    # dimension every point is nearer to the mean than to another point); the repair
    # splits the donor in two instead, so k-means finds the two halves of 2-means.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 64)).astype(np.float32)
    init = np.stack([X.mean(0), X.mean(0) + 1e4]).astype(np.float32)
    r = kmeans(X, 2, init=init, n_iter=10)
    assert r.sizes.min() >= 120, r.sizes


def test_bisecting_init_does_not_seed_on_outliers():
    # isotropic data with heavy-tailed norms (like RQ-KMeans' later-level residuals):
    # greedy k-means++ seeds on the far points, which keep a few points each while
    # one cluster takes most of the mass; the bisecting init starts from means of
    # groups and keeps every cluster below a third of the data
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(1500, 128)) * rng.lognormal(0, 0.5, size=(1500, 1))).astype(np.float32)
    pp = kmeans(X, 32, init="k-means++", random_state=0)
    bis = kmeans(X, 32, init="bisecting", random_state=0)
    assert bis.sizes.max() <= 1500 / 3 < 1500 / 2 < pp.sizes.max(), (bis.sizes, pp.sizes)
    again = kmeans(X, 32, init="bisecting", random_state=0)  # deterministic per seed
    assert np.array_equal(again.labels, bis.labels) and (bis.sizes > 0).all()
    # no cluster can split (all points equal): the missing centroids are data rows
    same = kmeans(np.ones((10, 3), dtype=np.float32), 4, init="bisecting")
    assert same.sizes.sum() == 10 and np.allclose(same.centroids, 1.0)


def test_bisecting_init_runs_on_16_points_per_centroid(monkeypatch):
    # the init's cost is bounded by max(16 K, 4096) sampled rows of the training sample
    # (not the whole sample); its centroids are still means of groups of those rows
    import sidkit.tokenizers.kmeans as km

    seen = []
    real = km._bisecting

    def spy(X, k, gen, **kw):
        seen.append(X.shape[0])
        return real(X, k, gen, **kw)

    monkeypatch.setattr(km, "_bisecting", spy)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 4)).astype(np.float32)
    r = kmeans(X, 300, init="bisecting", n_iter=2, max_points_per_centroid=None)
    assert seen == [16 * 300] and (r.sizes > 0).all()
    kmeans(X[:5000], 8, init="bisecting", n_iter=1, max_points_per_centroid=None)
    assert seen[-1] == 4096  # at least 4096 rows when there are that many
    kmeans(X[:1000], 8, init="bisecting", n_iter=1, max_points_per_centroid=None)
    assert seen[-1] == 1000  # never more than the training sample


def test_balanced_assignment_breaks_equal_distances_by_row_and_is_one_rule_for_kmeans_and_gaoq():
    """Three points at exactly the same distance from a centroid that takes two: the lower
    rows win, the third goes to the other centroid -- in k-means' assignment and in the
    batched one GAOQ runs over blocks of parents (the same function, P problems at once)."""
    import torch

    from sidkit.tokenizers.kmeans import _balanced_assign_t, _full_dist_t, batched_balanced_assign

    X = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [11.0, 0.0]])
    C = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    labels, dist = _balanced_assign_t(X, C, 2, 2)
    assert labels.tolist() == [0, 0, 1, 1]
    assert dist.tolist() == pytest.approx([1.0, 1.0, 101.0, 1.0])
    D = _full_dist_t(X, C)
    valid = torch.tensor([[True] * 4, [True, True, True, False]])
    lab, d = batched_balanced_assign(torch.stack([D, D]), valid, torch.tensor([2, 1]), torch.tensor([2, 2]))
    assert lab[0].tolist() == [0, 0, 1, 1]
    assert lab[1].tolist() == [0, 0, 1, -1]          # padding row: -1; sizes 2 and 1 (lo 1)
