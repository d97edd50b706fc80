"""The k-means core every quantizer builds on (torch inside, numpy at the boundary).

In the spirit of faiss ``contrib/clustering.py``: small functions with named stats.

* :func:`assign` -- nearest centroid of every row, by chunked GEMM distances
  ``||x||^2 - 2 x.c + ||c||^2`` (one ``addmm`` into a preallocated ``(chunk, K)``
  buffer per chunk, then ``min``), so memory stays bounded whatever ``N``.
* :func:`kmeans` -- Lloyd's algorithm with greedy k-means++ or bisecting init (on a
  sample; the tokenizers use bisecting, see :func:`_bisecting`),
  faiss-style training-set sampling (at most ``max_points_per_centroid * K`` rows),
  ``n_init`` restarts (best training inertia wins), empty-cluster repair, and an
  optional size-constrained (*balanced*) mode.  The returned labels, inertia and
  sizes are always computed over **all** input points.

Balanced mode (``balanced=True``) -- algorithm and guarantee
------------------------------------------------------------
Let ``t = N / K``, ``hi = max(ceil(t), floor((1 + tol) t))`` and
``lo = min(floor(t), ceil((1 - tol) t))``.  Every assignment step is
*capacity-constrained greedy assignment in distance order*, run in vectorised rounds:

1. every unassigned point proposes to its nearest centroid that still has capacity;
   each centroid accepts its closest proposers up to its remaining capacity
   (``hi`` minus what it already holds); full centroids are masked out and the
   rejected points propose again.  Each round fills at least one centroid or
   places every proposer, so this ends in at most ``K`` rounds, with every size
   ``<= hi``.
2. under-filled clusters (size ``< lo``) take points from clusters holding more than
   ``lo``: each movable point proposes to the under-filled cluster that costs it the
   least extra distance, each under-filled cluster accepts its cheapest proposers up
   to its deficit, and each donor gives away at most its surplus.  At least one
   point moves per round and the total surplus ``N - K lo`` covers the total deficit,
   so this terminates with every size ``>= lo``.

Guarantee: every final cluster size over all ``N`` points lies in ``[lo, hi]``,
i.e. within ``balance_tolerance * N / K`` of ``N / K`` (or within one item of it
when the tolerance is smaller than one item).  Centroids are the means of their
(balanced) members; labels are the balanced assignment, not the nearest centroid.

Lloyd in balanced mode: unconstrained iterations first (at most ``n_iter // 2``, a
cheap argmin) warm-start the centroids, then size-constrained ones; each phase stops
once at most ``CHANGE_TOL`` (0.3%) of the labels change between iterations -- the
greedy assignment rarely reproduces its labels exactly, so waiting for equal labels
ran every one of the ``n_iter`` balanced assignments.

Cost: one GEMM pass per assignment as in plain k-means; the rounds then run on the
whole ``(N, K)`` distance matrix when ``N K <= 32M`` (the training sample), or on
each point's 16 nearest centroids otherwise (all points), refreshing by GEMM only the
lists of points whose candidates are all full.  Acceptance ranks proposers with one
sort of an int64 ``(centroid, distance bits)`` key, and only for over-subscribed
centroids.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from ..utils import resolve_device, rng as make_rng

__all__ = ["KMeansResult", "kmeans", "assign", "as_matrix", "check_min_items", "imbalance_factor"]

#: target size of the (chunk, K) float32 distance buffer, in elements (16 MiB)
_BUF_ELEMS = 1 << 22
#: below this many distances per chunk, use the inline (single-thread) argmin path
_SMALL = 1 << 15


@dataclass
class KMeansResult:
    """Outcome of :func:`kmeans`."""

    centroids: np.ndarray  # (K, d) float32
    labels: np.ndarray  # (N,) int64, assignment of ALL input points
    inertia: float  # mean squared distance of all points to their centroid
    n_iter: int
    sizes: np.ndarray  # (K,) int64 cluster sizes over all points


# ----------------------------------------------------------------- validation
def as_matrix(X: Any, *, name: str = "X", min_items: int = 1, check_finite: bool = True):
    """Validate ``X`` (numpy array or torch tensor) and return a float32 C-contiguous
    CPU-or-device torch tensor sharing memory with ``X`` when possible.

    The NaN/inf check is a chunked float32 sum (no ``N x d`` temporary); only when a
    sum is not finite are the offending rows searched for.  ``check_finite=False``
    skips that pass: the caller must then call :func:`check_finite` itself when its
    own computation flags a non-finite value.
    """
    import torch

    if isinstance(X, torch.Tensor):
        t = X.detach()
    else:
        try:
            arr = np.asarray(X)
        except Exception as e:  # pragma: no cover - exotic inputs
            raise DataError(f"{name} cannot be converted to an array: {e}",
                            "pass a numpy array (or list of equal-length rows) of numbers") from e
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise DataError(f"{name} must be numeric, got dtype {arr.dtype}",
                            "pass a float array of shape (items, dim)")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.flags.writeable:
            t = torch.from_numpy(arr)
        else:  # e.g. np.load(mmap_mode="r"): sidkit never writes to X, so share it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                t = torch.from_numpy(arr)
    if t.ndim != 2:
        raise DataError(
            f"{name} must be a 2-D (items, dim) array, got {t.ndim}-D shape {tuple(t.shape)}",
            "pass one row per item; reshape a single item with x[None, :]",
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise DataError(f"{name} is empty (shape {tuple(t.shape)})", "pass at least one item")
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    t = t.contiguous()
    if check_finite:
        # NaN/inf propagate into a sum: a finite float32 sum per chunk proves the chunk
        # clean (an overflowing sum of huge values only triggers the exact check below)
        finite = True
        for s in range(0, t.shape[0], 16384):
            if not math.isfinite(float(t[s:s + 16384].sum())):
                finite = False
                break
        if not finite:
            check_finite_rows(t, name=name)
    check_min_items(t.shape[0], min_items, name=name)
    return t


def check_finite_rows(t, *, name: str = "X") -> None:
    """DataError naming the rows of ``t`` holding NaN or inf (exact check)."""
    import torch

    bad = ~torch.isfinite(t).all(dim=1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()
        raise DataError(
            f"{name} has NaN or inf values in {rows.numel()} row(s), first at row {int(rows[0])}",
            "drop or re-embed those items",
        )


def check_min_items(n: int, k: int, *, name: str = "X") -> None:
    """DataError when ``n`` items cannot fill ``k`` clusters/codewords."""
    if n < k:
        raise DataError(
            f"{name} has {n} items but {k} clusters/codewords were requested "
            "(more clusters than items)",
            "use fewer clusters (smaller codebook sizes) or more items",
        )


def _chunk_rows(k: int, chunk_size: int | None) -> int:
    if chunk_size:
        return max(1, int(chunk_size))
    return max(256, _BUF_ELEMS // max(k, 1))


# ----------------------------------------------------------------- assignment
def _sqnorms(X, rows=None, chunk: int = 65536, device=None):
    """Squared row norms, chunked (no N x d temporary)."""
    import torch

    n = X.shape[0] if rows is None else rows.numel()
    out = torch.empty(n, dtype=torch.float32, device=device or X.device)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        xs = X[s:e] if rows is None else X[rows[s:e]]
        out[s:e] = torch.linalg.vector_norm(xs.to(out.device), dim=1).square_()
    return out


def _gemm_plan(X, C, rows, chunk: int | None, cnorm):
    """Rows addressed, K, rows per GEMM chunk and the squared centroid norms
    (``cnorm`` when given) for a chunked distance pass over ``X`` (or ``X[rows]``)."""
    import torch

    k = C.shape[0]
    n = X.shape[0] if rows is None else rows.numel()
    chunk = min(_chunk_rows(k, chunk), max(n, 1))
    if cnorm is None:
        cnorm = torch.linalg.vector_norm(C, dim=1).square_()
    return n, k, chunk, cnorm


def _assign_t(X, C, *, cnorm=None, rows=None, chunk: int | None = None, with_dist=True,
              xnorm=None, buf=None):
    """Nearest centroid for ``X`` (or ``X[rows]``) -> (labels int64, sq. distances).

    ``cnorm`` may carry ``inf`` to mask centroids; ``xnorm`` (squared row norms of
    the rows addressed) saves recomputing them when ``X`` is reused across calls.
    ``X`` may live on the CPU while ``C`` lives on a GPU: chunks are moved one at a
    time.  ``buf`` (a flat float32 tensor of at least ``chunk * K``) is reused as the
    distance buffer (avoids page-faulting a fresh one on every call).
    """
    import torch

    dev = C.device
    n, k, chunk, cnorm = _gemm_plan(X, C, rows, chunk, cnorm)
    Ct = C.t()
    labels = torch.empty(n, dtype=torch.int64, device=dev)
    dist = torch.empty(n, dtype=torch.float32, device=dev)
    if buf is None or buf.numel() < chunk * k:
        buf = torch.empty(chunk * k, dtype=torch.float32, device=dev)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        xs = X[s:e] if rows is None else X[rows[s:e]]
        if xs.device != dev:
            xs = xs.to(dev, non_blocking=True)
        b = buf[: (e - s) * k].view(e - s, k)
        torch.addmm(cnorm, xs, Ct, beta=1.0, alpha=-2.0, out=b)
        if b.numel() <= _SMALL:
            # torch.min(dim) always pays a thread-pool round trip (ms on a busy
            # 2-core machine); argmin runs inline below the parallel grain size
            lab = torch.argmin(b, dim=1)
            labels[s:e] = lab
            dist[s:e] = b.gather(1, lab[:, None]).squeeze(1)
        else:
            torch.min(b, dim=1, out=(dist[s:e], labels[s:e]))
        if with_dist:
            if xnorm is not None:
                dist[s:e] += xnorm[s:e]
            else:
                dist[s:e] += torch.linalg.vector_norm(xs, dim=1).square_()
    if with_dist:
        dist.clamp_(min=0.0)
    return labels, dist


#: rows per chunk of :func:`encode_residual_t`
_ENC_CHUNK = 4096


def encode_residual_t(X, Cs, *, cnorms=None, chunk: int | None = None, out=None):
    """Residual-quantisation encode: codes ``(N, L)`` int64 of the rows of ``X``
    against the codebooks ``Cs`` (level ``l`` quantises ``x - sum_{j<l} C_j[c_j]``).

    The same arithmetic as :func:`_assign_t` per level (``addmm(||c||^2, r, C^T,
    alpha=-2)``, then the first minimum) and the same residual updates as
    :class:`~sidkit.tokenizers.rq._ResidualView` (``x - g_0``, then ``-= g_l``), so
    the codes are those of the fit, but fused per chunk of rows: every buffer (the
    ``(chunk, K)`` distances, the residual, the gathered codewords, labels, minima) is
    allocated once and reused, and a chunk stays in cache from one level to the next.

    Returns ``(codes, finite)``: ``finite`` is False when some row's first-level
    minimum is not finite, which happens whenever that row holds NaN or inf (the
    caller then checks ``X`` exactly; huge finite rows may also overflow).
    """
    import torch

    dev = Cs[0].device
    n, d = X.shape
    L = len(Cs)
    kmax = max(C.shape[0] for C in Cs)
    if cnorms is None:
        cnorms = [torch.linalg.vector_norm(C, dim=1).square_() for C in Cs]
    Cts = [C.t() for C in Cs]
    chunk = min(max(1, int(chunk or _ENC_CHUNK)), max(n, 1))
    if out is None:
        out = torch.empty((n, L), dtype=torch.int64, device=dev)
    dbuf = torch.empty(chunk * kmax, dtype=torch.float32, device=dev)
    rbuf = torch.empty((chunk, d), dtype=torch.float32, device=dev)
    gbuf = torch.empty((chunk, d), dtype=torch.float32, device=dev)
    mins = torch.empty(chunk, dtype=torch.float32, device=dev)
    labs = torch.empty((L, chunk), dtype=torch.int64, device=dev)
    finite = True
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        m = e - s
        x = X[s:e]
        if x.device != dev:
            x = x.to(dev, non_blocking=True)
        r = x  # a view of X: never modified in place
        for l in range(L):
            k = Cs[l].shape[0]
            b = dbuf[: m * k].view(m, k)
            torch.addmm(cnorms[l], r, Cts[l], beta=1.0, alpha=-2.0, out=b)
            lab = labs[l, :m]
            if b.numel() <= _SMALL:  # inline argmin (see _assign_t)
                torch.argmin(b, dim=1, out=lab)
                if l == 0:
                    torch.gather(b, 1, lab[:, None], out=mins[:m, None])
            else:
                torch.min(b, dim=1, out=(mins[:m], lab))
            if l == 0 and finite and not bool(torch.isfinite(mins[:m]).all()):
                finite = False
            if l + 1 < L:
                g = gbuf[:m]
                torch.index_select(Cs[l], 0, lab, out=g)
                if l == 0:
                    r = torch.sub(x, g, out=rbuf[:m])
                else:
                    r.sub_(g)
        out[s:e] = labs[:, :m].t()
    return out, finite


def assign(X: Any, centroids: Any, *, chunk_size: int | None = None,
           device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row of ``X``.

    Returns ``(labels, sq_dists)``: ``(N,)`` int64 and ``(N,)`` float32 squared
    Euclidean distances.  Memory: one ``(chunk_size, K)`` float32 buffer.
    """
    import torch

    dev = resolve_device(device)
    Xt = as_matrix(X)
    C = as_matrix(centroids, name="centroids").to(dev)
    if C.shape[1] != Xt.shape[1]:
        raise DataError(f"X has dimension {Xt.shape[1]} but centroids have {C.shape[1]}",
                        "use centroids fitted on embeddings of the same dimension")
    with torch.no_grad():
        labels, dist = _assign_t(Xt, C, chunk=chunk_size)
    return labels.cpu().numpy(), dist.cpu().numpy()


def imbalance_factor(sizes: np.ndarray) -> float:
    """``K * sum(s^2) / N^2`` (1.0 = perfectly balanced), as in faiss."""
    s = np.asarray(sizes, dtype=np.float64)
    tot = s.sum()
    return float(len(s) * (s * s).sum() / (tot * tot)) if tot else float("nan")


# ----------------------------------------------------------------- helpers
#: work (rows * K * d multiply-adds per pass) below which a k-means runs on one
#: thread: small torch ops pay a thread-pool round trip (ms on a busy machine)
_SMALL_WORK = 1 << 24


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily run torch CPU ops on ``n`` threads (None = leave as is).

    Only a performance knob for loops of small ops (k-means++, tiny problems);
    the previous setting is always restored.
    """
    import torch

    if n is None or torch.get_num_threads() == n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def rank_in_sorted_groups(sorted_group, perm):
    """Ranks within runs of equal ``sorted_group`` (= ``group[perm]``), scattered back
    through ``perm`` to the original positions (torch)."""
    import torch

    n = sorted_group.numel()
    pos = torch.arange(n, device=sorted_group.device)
    is_start = torch.ones(n, dtype=torch.bool, device=sorted_group.device)
    is_start[1:] = sorted_group[1:] != sorted_group[:-1]
    start = torch.cummax(torch.where(is_start, pos, torch.zeros_like(pos)), dim=0).values
    rank = torch.empty_like(pos)
    rank[perm] = pos - start
    return rank


def _segment_sums_np(X, labels, k: int):
    """``(sums (k, d) float32, counts (k,))`` of the rows of CPU tensor ``X`` per
    label, as numpy arrays.

    A ``(K, N)`` 0/1 CSR matrix times ``X`` (scipy) is faster than torch's CPU
    ``index_add_`` (slow on small inputs with several threads, ~4x slower at
    64k x 384), and the bookkeeping avoids torch's per-op overhead.
    """
    import scipy.sparse as sp

    n = X.shape[0]
    lab = labels.numpy()
    counts = np.bincount(lab, minlength=k)
    small = lab.astype(np.int16) if k <= np.iinfo(np.int16).max else lab
    order = np.argsort(small, kind="stable")  # radix sort for 16-bit keys
    indptr = np.zeros(k + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    oh = sp.csr_matrix((np.ones(n, dtype=np.float32), order, indptr), shape=(k, n))
    return np.asarray(oh @ X.numpy(), dtype=np.float32), counts


def _segment_sums(X, labels, k: int):
    """Torch ``(sums (k, d), counts (k,))`` of the rows of ``X`` per label."""
    import torch

    if X.device.type == "cpu":
        sums, counts = _segment_sums_np(X, labels, k)
        return torch.from_numpy(sums), torch.from_numpy(counts)
    counts = torch.bincount(labels, minlength=k)
    sums = torch.zeros(k, X.shape[1], dtype=torch.float32, device=X.device)
    return sums.index_add_(0, labels, X), counts


def _update_centroids(X, labels, k, C_old):
    """Means of the members; clusters without members keep their old centroid."""
    import torch

    if X.device.type == "cpu":
        sums, counts = _segment_sums_np(X, labels, k)
        C = C_old.numpy().copy()
        nz = counts > 0
        C[nz] = sums[nz] / counts[nz, None].astype(np.float32)
        return torch.from_numpy(C), torch.from_numpy(counts)
    counts = torch.bincount(labels, minlength=k)
    sums = torch.zeros(k, X.shape[1], dtype=torch.float32, device=X.device)
    sums.index_add_(0, labels, X)
    nz = counts > 0
    C = C_old.clone()
    C[nz] = sums[nz] / counts[nz].unsqueeze(1).to(torch.float32)
    return C, counts


def _repair_empty(C, X, labels, dist, counts) -> int:
    """Split the largest clusters to refill empty ones (in place on ``C``), as
    faiss's ``split_clusters`` does, but along a direction inside the donor.

    For each empty cluster (in index order) the currently largest cluster is the
    donor: with ``u`` the offset from the donor's centroid ``c`` to its member
    farthest from ``c`` (the next farthest when a donor is used again), the empty
    centroid becomes ``c + u / 16`` and the donor's ``c - u / 16``, so the donor's
    members are split in two by the hyperplane through ``c`` normal to ``u`` (a
    real split: placing the new centroid *on* the far member would, on
    near-isotropic high-dimensional residuals, win that one point only).  The far
    member is nearer to ``c + u / 16`` than it was to ``c``, hence than to any other
    centroid, so the refilled cluster owns at least that point at the next
    assignment (unless two centroids coincide); the donor's size is halved for the
    next choice.
    """
    import torch

    empty = torch.nonzero(counts == 0).flatten().tolist()
    if not empty:
        return 0
    lab = labels.cpu().numpy()
    d = dist.cpu().numpy()
    order = np.lexsort((-d, lab))  # by cluster, farthest first
    starts = np.searchsorted(lab[order], np.arange(len(counts)))
    sizes = counts.cpu().numpy().astype(np.float64)
    used = np.zeros(len(counts), dtype=np.int64)
    true_sizes = counts.cpu().numpy()
    n_fixed = 0
    for e in empty:
        j = int(np.argmax(sizes))
        if true_sizes[j] - used[j] <= 1:
            break  # nothing left to split
        row = int(order[starts[j] + used[j]])
        used[j] += 1
        u = (X[row].to(C.device) - C[j]) * (1.0 / 16.0)
        C[e] = C[j] + u
        C[j] -= u
        sizes[j] /= 2.0
        sizes[e] = sizes[j]
        n_fixed += 1
    return n_fixed


def _kmeanspp(X, k: int, gen: np.random.Generator, n_local_trials: int | None = None):
    """Greedy k-means++ (as scikit-learn): at each step sample ``2 + log K`` candidates
    proportionally to D^2 and keep the one that lowers the potential most."""
    with torch_threads(1 if X.device.type == "cpu" else None):  # k small sequential steps
        return _kmeanspp_impl(X, k, gen, n_local_trials)


def _kmeanspp_impl(X, k, gen, n_local_trials):
    import torch

    n = X.shape[0]
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(k))
    xn = _sqnorms(X)
    first = int(gen.integers(n))
    centers = [first]
    closest = (xn - 2.0 * (X @ X[first]) + xn[first]).clamp_(min=0)
    for _ in range(1, k):
        cs = torch.cumsum(closest.to(torch.float64), 0)
        pot = float(cs[-1])
        if pot <= 0:  # all points already covered (duplicates): pick at random
            cand = torch.as_tensor(gen.integers(n, size=n_local_trials), device=X.device)
        else:
            r = torch.as_tensor(gen.random(n_local_trials) * pot, device=X.device)
            cand = torch.searchsorted(cs, r).clamp_(max=n - 1)
        Xc = X[cand]
        d = torch.addmm(xn[cand].unsqueeze(0), X, Xc.t(), beta=1.0, alpha=-2.0)
        d += xn.unsqueeze(1)
        d.clamp_(min=0)
        torch.minimum(d, closest.unsqueeze(1), out=d)
        best = int(torch.argmin(d.sum(0, dtype=torch.float64)))
        closest = d[:, best].contiguous()
        centers.append(int(cand[best]))
    return X[torch.as_tensor(centers, device=X.device)].clone()


def _bisecting(X, k: int, gen: np.random.Generator, *, power_iters: int = 2,
               two_means_iters: int = 0):
    """Bisecting init: centroids that are means of groups of points, never single
    points (so never outliers).

    Start from one cluster (the mean); each round splits the clusters with the largest
    within-cluster sum of squares (SSE) -- at most all of them, and no more than the
    ``k`` centroids still missing -- each along its principal direction (power
    iteration), split at the cluster mean (the sign of the projection), optionally
    refined by ``two_means_iters`` steps of 2-means inside the cluster (default 0:
    on the RQ-KMeans benchmark data the refinement made the init slower and the
    k-means after it no better, see benchmarks/README.md).
    All clusters of a round are split at once with segment sums (``index_add_``), so
    a round is a constant number of passes over the rows: ``ceil(log2 k)`` rounds at
    least, ``O(rounds * N * d)`` work in all.  Clusters whose points are all equal
    cannot split; when no cluster can, the missing centroids are random rows (as
    faiss's init).

    Why: greedy k-means++ samples seeds proportionally to the squared distance, so on
    near-isotropic data (the residuals of RQ-KMeans' later levels) it seeds on
    outliers; those centroids keep one or two points while the remaining mass shares
    a few centroids, and Lloyd cannot undo it -- on MovieLens-100K text embeddings
    (1,682 x 384, 3 x 64) level 3 put 1,550 items into one code.
    """
    # O(N d) elementwise ops: on small inputs a thread-pool round trip per op costs
    # more than the op (10x slower with 2 threads on a busy 2-core machine)
    small = X.device.type == "cpu" and X.shape[0] * X.shape[1] < _SMALL_INIT
    with torch_threads(1 if small else None):
        return _bisecting_impl(X, k, gen, power_iters, two_means_iters)


#: training points per centroid the bisecting init runs on (at least 4096)
_BISECT_PER_CENTROID = 16
#: elements of the rows below which the bisecting init runs on one thread
_SMALL_INIT = 1 << 22


def _bisecting_impl(X, k, gen, power_iters, two_means_iters):
    import torch

    dev = X.device
    n, d = X.shape
    Xf = X.contiguous()
    labels = torch.zeros(n, dtype=torch.int64, device=dev)
    C = torch.zeros((k, d), dtype=torch.float32, device=dev)
    C[0] = Xf.mean(0)
    dist = (Xf - C[0]).square_().sum(1)
    m = 1
    stuck = torch.zeros(k, dtype=torch.bool, device=dev)  # cannot be split
    while m < k:
        cnt = torch.bincount(labels, minlength=m)
        sse = torch.zeros(m, dtype=torch.float64, device=dev).index_add_(
            0, labels, dist.to(torch.float64))
        score = torch.where((cnt >= 2) & ~stuck[:m] & (sse > 0), sse,
                            torch.full_like(sse, -1.0))
        t = min(k - m, int((score > 0).sum()))
        if t == 0:
            break
        sel = torch.topk(score, t).indices
        slot = torch.full((m,), -1, dtype=torch.int64, device=dev)  # split j -> 0..t-1
        slot[sel] = torch.arange(t, device=dev)
        rows = torch.nonzero(slot[labels] >= 0).flatten()
        g = slot[labels[rows]]  # group (0..t-1) of every row being split
        Y = Xf[rows]
        mu = C[sel]
        Yc = Y - mu[g]
        # ---- principal direction of every selected cluster (power iteration)
        v = torch.from_numpy(gen.standard_normal((t, d)).astype(np.float32)).to(dev)
        for _ in range(power_iters):
            p = (Yc * v[g]).sum(1)
            v = _segment_sums(Yc * p[:, None], g, t)[0]
            v /= torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_(min=1e-30)
        side = (Yc * v[g]).sum(1) > 0
        del Yc
        # ---- 2-means inside each cluster, from the split by the sign of the projection
        for it in range(two_means_iters + 1):
            key = 2 * g + (~side).to(torch.int64)
            sums, num = _segment_sums(Y, key, 2 * t)
            num = num.view(t, 2)
            means = (sums / num.view(-1, 1).clamp(min=1).to(torch.float32)).view(t, 2, d)
            if it == two_means_iters:
                break
            a, b = means[:, 0], means[:, 1]
            ok = (num > 0).all(1)
            # nearer to a than to b  <=>  (y - (a + b) / 2) . (a - b) > 0
            w = a - b
            thr = ((a + b) * 0.5 * w).sum(1)
            new = (Y * w[g]).sum(1) > thr[g]
            side = torch.where(ok[g], new, side)
        ok = (num > 0).all(1)
        stuck[sel[~ok]] = True
        good = torch.nonzero(ok).flatten()
        tn = good.numel()
        if tn == 0:
            continue
        new_id = torch.full((t,), -1, dtype=torch.int64, device=dev)
        new_id[good] = m + torch.arange(tn, device=dev)
        C[sel[good]] = means[good, 0]
        C[m:m + tn] = means[good, 1]
        gid = torch.where(side, sel[g], new_id[g])
        keep = new_id[g] >= 0
        gid = torch.where(keep, gid, labels[rows])
        labels[rows] = gid
        dist[rows] = (Y - C[gid]).square_().sum(1)
        m += tn
    if m < k:  # duplicates: no cluster can split any more
        C[m:] = Xf[torch.as_tensor(gen.choice(n, size=k - m, replace=n < k - m), device=dev)]
    return C


def _balanced_bounds(n: int, k: int, tol: float) -> tuple[int, int]:
    t = n / k
    hi = max(math.ceil(t), math.floor((1.0 + tol) * t + 1e-9))
    lo = min(math.floor(t), math.ceil((1.0 - tol) * t - 1e-9))
    return max(lo, 0), hi


def _accept_closest(lab, cost, capacity):
    """Per group ``lab``, accept the lowest-``cost`` members up to ``capacity[lab]`` (equal
    costs: the lower position first; the rank of :func:`rank_by_cost`)."""
    return rank_by_cost(lab, cost.float()) < capacity[lab]


def _topk_t(X, C, m: int, *, cnorm=None, rows=None, chunk: int | None = None, xnorm=None):
    """The ``m`` nearest centroids of every row of ``X`` (or ``X[rows]``), nearest
    first, by chunked GEMM: ``(sq_dists (n, m) float32, indices (n, m) int64)``.
    ``cnorm`` may carry ``inf`` to mask centroids."""
    import torch

    dev = C.device
    n, k, chunk, cnorm = _gemm_plan(X, C, rows, chunk, cnorm)
    Ct = C.t()
    out_d = torch.empty((n, m), dtype=torch.float32, device=dev)
    out_i = torch.empty((n, m), dtype=torch.int64, device=dev)
    buf = torch.empty(chunk, k, dtype=torch.float32, device=dev)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        xs = X[s:e] if rows is None else X[rows[s:e]]
        if xs.device != dev:
            xs = xs.to(dev, non_blocking=True)
        b = buf[: e - s]
        torch.addmm(cnorm, xs, Ct, beta=1.0, alpha=-2.0, out=b)
        v, i = torch.topk(b, m, dim=1, largest=False, sorted=True)
        xn = xnorm[s:e] if xnorm is not None else torch.linalg.vector_norm(xs, dim=1).square_()
        out_d[s:e] = (v + xn[:, None]).clamp_(min=0.0)
        out_i[s:e] = i
    return out_d, out_i


def _full_dist_t(X, C, *, chunk: int | None = None, xnorm=None):
    """The whole (N, K) squared-distance matrix (small problems only)."""
    import torch

    dev = C.device
    n, k = X.shape[0], C.shape[0]
    chunk = min(_chunk_rows(k, chunk), max(n, 1))
    cnorm = torch.linalg.vector_norm(C, dim=1).square_()
    D = torch.empty((n, k), dtype=torch.float32, device=dev)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        xs = X[s:e].to(dev)
        torch.addmm(cnorm, xs, C.t(), beta=1.0, alpha=-2.0, out=D[s:e])
        xn = xnorm[s:e] if xnorm is not None else torch.linalg.vector_norm(xs, dim=1).square_()
        D[s:e] += xn[:, None]
    return D.clamp_(min=0.0)


#: balanced k-means: a Lloyd phase stops once at most this fraction of labels changes
#: between iterations (3e-3 rather than 1e-3: about one fewer iteration per phase;
#: GAOQ level-2 inertia +0.26% on average over 6 seeds of clustered 100k x 128 data,
#: within seed spread)
CHANGE_TOL = 3e-3

def rank_by_cost(group, cost):
    """Rank of each position within its ``group`` when ordered by ``cost`` (float32),
    ties by position: one stable sort on the composite int64 key ``(group, cost)``.

    The float bits are mapped to an order-preserving unsigned 32-bit key (negative
    costs included), so this equals ranking in ``argsort(cost, stable=True)`` order.
    """
    import torch

    n = group.numel()
    if n == 0:
        return group.clone()
    bits = (cost + 0.0).view(torch.int32).to(torch.int64)  # + 0.0: -0.0 -> +0.0
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + (1 << 31)
    sk, perm = torch.sort((group << 32) | bits, stable=True)
    return rank_in_sorted_groups(sk >> 32, perm)


def batched_balanced_assign(dist, valid, lo, hi, xn=None):
    """Size-constrained assignment of P independent problems at once.

    ``dist`` (P, m, k) squared distances, ``valid`` (P, m) real rows, ``lo``/``hi`` (P,)
    size bounds.  The rule of the balanced mode (module docstring): greedy proposals in
    distance order under capacity ``hi`` (each cluster accepts its closest proposers;
    equal costs: the lower row first), then clusters below ``lo`` take their cheapest
    moves from clusters above ``lo``.  :func:`kmeans`' balanced assignment is this with
    ``P = 1`` whenever its (N, K) distance matrix fits in memory; GAOQ runs one call for
    a block of parents.  Returns labels (P, m)
    (-1 on padding) and the squared distance to the assigned centroid.  Rows are
    handled through flat indices (``index_select``), the distance matrix is
    computed once by the caller.

    ``xn`` (P, m): when given, ``dist`` lacks the row constant ``|x|^2`` (it is
    ``|c|^2 - 2 x.c``, which saves two passes over the matrix); only the ranking of
    different rows proposing to one cluster needs it, so it is added there, and to
    the returned distances.
    """
    P, m, k = dist.shape
    D = dist.reshape(P * m, k)
    labels, dd = _propose_rounds(D, P, m, valid, hi, xn)
    _lift_batched(D, P, m, valid, lo, labels, dd)
    if xn is not None:
        dd += xn.reshape(-1)
    return labels.view(P, m), dd.view(P, m)


def _propose_rounds(D, P: int, m: int, valid, hi, xn):
    """Phase 1 of :func:`batched_balanced_assign` on the flat (P m, k) matrix ``D``: labels
    (-1 on padding) and distances (without ``|x|^2`` when ``xn`` is given)."""
    import torch

    k = D.shape[1]
    dev = D.device
    labels = torch.full((P * m,), -1, dtype=torch.int64, device=dev)
    dd = torch.zeros(P * m, dtype=D.dtype, device=dev)
    remaining = hi[:, None].expand(P, k).reshape(-1).clone()
    f = torch.nonzero(valid.reshape(-1)).flatten()  # pending rows (flat)
    xnf = None if xn is None else xn.reshape(-1)
    first = True
    while f.numel():  # phase 1: at least one point is placed per round
        pp = torch.div(f, m, rounding_mode="floor")
        if first:  # nothing is full yet: row minima of D, no copy
            dmin, lab = D.min(1)
            if f.numel() < P * m:
                dmin, lab = dmin.index_select(0, f), lab.index_select(0, f)
        else:
            Df = D.index_select(0, f)  # a copy: masking in place is safe
            Df.masked_fill_((remaining.view(P, k) <= 0).index_select(0, pp), float("inf"))
            dmin, lab = Df.min(1)
        first = False
        key = pp * k + lab
        cost = dmin if xn is None else dmin + xnf.index_select(0, f)
        acc = rank_by_cost(key, cost) < remaining[key]  # closest first per cluster
        fa = f[acc]
        labels[fa] = lab[acc]
        dd[fa] = dmin[acc]
        remaining -= torch.bincount(key[acc], minlength=P * k)
        f = f[~acc]
    return labels, dd


def _lift_batched(D, P: int, m: int, valid, lo, labels, dd) -> None:
    """Phase 2 of :func:`batched_balanced_assign`, in place on ``labels`` and ``dd``."""
    import torch

    k = D.shape[1]
    dev = D.device
    inf = torch.tensor(float("inf"), dtype=D.dtype, device=dev)
    vflat = valid.reshape(-1)
    row_p = torch.div(torch.arange(P * m, device=dev), m, rounding_mode="floor")
    gkey = row_p * k + labels.clamp_min(0)
    sizes = torch.bincount(gkey[vflat], minlength=P * k)
    lo_k = lo[:, None].expand(P, k).reshape(-1)
    # phase 2: lift under-filled clusters.  Every movable row (in a cluster above lo,
    # in a group with an under-filled cluster) proposes its cheapest under-filled
    # cluster; targets accept their cheapest proposers up to the deficit, donors give
    # at most their surplus.  Proposals are kept between rounds: only rows whose
    # target filled up are re-targeted, rows whose donor reached lo drop out.
    if bool((sizes < lo_k).any()):
        under_any = (sizes < lo_k).view(P, k).any(1)
        f = torch.nonzero(vflat & ((sizes - lo_k)[gkey] > 0) & under_any.index_select(0, row_p)).flatten()

        ar_k = torch.arange(k, device=dev)

        def target(rows):
            # only the under-filled columns of each group: U (P, u) lists them in
            # column order (k = none), so ties resolve as an argmin over all columns
            under = (sizes < lo_k).view(P, k)
            u = max(int(under.sum(1).max()), 1)
            U = torch.sort(torch.where(under, ar_k, k), dim=1).values[:, :u]
            Ur = U.index_select(0, row_p[rows])
            pad = Ur == k
            Ur = Ur.masked_fill(pad, 0)
            c = D.reshape(-1)[rows[:, None] * k + Ur]
            c.sub_(dd[rows][:, None]).masked_fill_(pad, inf)
            cmin, j = c.min(1)
            return cmin, Ur.gather(1, j[:, None]).squeeze(1)

        cmin, tgt = target(f)
        while f.numel():
            surplus = (sizes - lo_k).clamp_min(0)
            deficit = (lo_k - sizes).clamp_min(0)
            keep = torch.isfinite(cmin) & (surplus[gkey[f]] > 0)
            f, cmin, tgt = f[keep], cmin[keep], tgt[keep]
            if f.numel() == 0:
                break
            tkey = row_p[f] * k + tgt
            cand = torch.nonzero(rank_by_cost(tkey, cmin) < deficit[tkey]).flatten()
            donor = gkey[f[cand]]
            take = cand[rank_by_cost(donor, cmin[cand]) < surplus[donor]]
            if take.numel() == 0:  # pragma: no cover - cannot happen, see above
                break
            ft, nk = f[take], tkey[take]
            sizes -= torch.bincount(gkey[ft], minlength=P * k)
            sizes += torch.bincount(nk, minlength=P * k)
            labels[ft] = tgt[take]
            gkey[ft] = nk
            dd[ft] = D[ft, tgt[take]]
            rest = torch.ones(f.numel(), dtype=torch.bool, device=dev)
            rest[take] = False
            f, cmin, tgt, tkey = f[rest], cmin[rest], tgt[rest], tkey[rest]
            stale = ~(sizes[tkey] < lo_k[tkey])  # target filled: propose again
            if bool(stale.any()):
                cmin[stale], tgt[stale] = target(f[stale])


#: balanced assignment keeps the whole (N, K) distance matrix up to this many entries
_FULL_D = 1 << 25


def _balanced_assign_t(X, C, lo: int, hi: int, chunk: int | None = None, xnorm=None):
    """Capacity-constrained assignment with every size in [lo, hi] (see module doc).

    Small problems (N K <= 32M) compute the distance matrix once and run
    :func:`batched_balanced_assign` on it; larger ones keep each point's 16 nearest
    centroids and refresh (by GEMM) only the lists of points whose candidates are all
    full, with the same rule.
    """
    import torch

    dev = C.device
    n, k = X.shape[0], C.shape[0]
    # the rounds are many small, memory-light ops: on a CPU run them on one thread
    # (a thread-pool round trip per op costs more than the op); GEMMs stay parallel
    one = 1 if dev.type == "cpu" else None
    if n * k <= _FULL_D:
        D = _full_dist_t(X, C, chunk=chunk, xnorm=xnorm)
        with torch_threads(one):
            lab, d = batched_balanced_assign(D[None], torch.ones((1, n), dtype=torch.bool, device=dev),
                                             torch.tensor([lo], device=dev), torch.tensor([hi], device=dev))
        return lab[0], d[0]
    labels = torch.full((n,), -1, dtype=torch.int64, device=dev)
    dist = torch.zeros(n, dtype=torch.float32, device=dev)
    remaining = torch.full((k,), hi, dtype=torch.int64, device=dev)
    cnorm = torch.linalg.vector_norm(C, dim=1).square_()
    # ---- phase 1: capacity hi; every pending point proposes to its nearest centroid
    # with room, each centroid accepts its closest proposers
    _rounds_candidates(X, C, cnorm, torch.arange(n, device=dev), labels, dist, remaining, chunk, xnorm, one)
    _lift(X, C, labels, dist, lo, chunk, xnorm)
    return labels, dist


def _rounds_candidates(X, C, cnorm, pending, labels, dist, remaining, chunk, xnorm, one):
    """Phase 1 rounds on each point's m nearest centroids (large N)."""
    import torch

    dev = C.device
    n, k = X.shape[0], C.shape[0]
    inf = float("inf")
    m = min(k, 16)
    cand_d, cand_i = _topk_t(X, C, m, cnorm=cnorm, chunk=chunk, xnorm=xnorm)
    ptr = torch.zeros(n, dtype=torch.int64, device=dev)
    while pending.numel():
        with torch_threads(one):
            while True:  # skip candidates that are full (at most m vectorised steps)
                live = pending[ptr[pending] < m]
                if live.numel() == 0:
                    break
                full = remaining[cand_i[live, ptr[live]]] <= 0
                if not bool(full.any()):
                    break
                ptr[live[full]] += 1
            dead = pending[ptr[pending] >= m]
        if dead.numel():  # refresh exhausted lists among centroids with room
            cn = torch.where(remaining > 0, cnorm, torch.full_like(cnorm, inf))
            xr = None if xnorm is None else xnorm[dead.to(xnorm.device)]
            cd, ci = _topk_t(X, C, m, cnorm=cn, rows=dead.to(X.device), chunk=chunk, xnorm=xr)
            cand_d[dead], cand_i[dead], ptr[dead] = cd, ci, 0
            continue
        with torch_threads(one):
            lab = cand_i[pending, ptr[pending]]
            d = cand_d[pending, ptr[pending]]
            acc = _accept_closest(lab, d, remaining)
            labels[pending[acc]] = lab[acc]
            dist[pending[acc]] = d[acc]
            remaining -= torch.bincount(lab[acc], minlength=k)
            rej = pending[~acc]
            ptr[rej] += 1  # a rejection means that centroid is full now
            pending = rej


def _lift(X, C, labels, dist, lo, chunk, xnorm):
    """Phase 2: lift clusters below ``lo`` with the cheapest moves from donors."""
    import torch

    dev = C.device
    k = C.shape[0]
    sizes = torch.bincount(labels, minlength=k)
    # ---- phase 2: lift clusters below lo with the cheapest moves from donors
    while bool((sizes < lo).any()):
        under = torch.nonzero(sizes < lo).flatten()
        deficit = torch.zeros(k, dtype=torch.int64, device=dev)
        deficit[under] = lo - sizes[under]
        movable = torch.nonzero(sizes[labels] > lo).flatten()
        if movable.numel() == 0:  # pragma: no cover - impossible when K*lo <= N
            break
        xr = None if xnorm is None else xnorm[movable.to(xnorm.device)]
        sub, d_u = _assign_t(X, C[under], rows=movable.to(X.device), chunk=chunk, xnorm=xr)
        target = under[sub]
        cost = d_u - dist[movable]
        ok = _accept_closest(target, cost, deficit)  # each under-filled cluster: its deficit
        idx = torch.nonzero(ok).flatten()
        donor = labels[movable[idx]]
        keep = _accept_closest(donor, cost[idx], sizes - lo)  # each donor: its surplus
        idx = idx[keep]
        rows, new = movable[idx], target[idx]
        sizes -= torch.bincount(labels[rows], minlength=k)
        sizes += torch.bincount(new, minlength=k)
        labels[rows] = new
        dist[rows] = d_u[idx]


# ----------------------------------------------------------------- k-means
def kmeans_t(Xt, k: int, *, n_iter: int, n_init: int, init: Any,
              max_points_per_centroid: int | None, balanced: bool, balance_tolerance: float,
              gen: np.random.Generator, dev, chunk_size: int | None = None,
              verbose: bool = False):
    """Core of :func:`kmeans` on a validated ``Xt``: anything with ``shape``,
    ``device`` and row indexing (a tensor or a lazy residual view).

    Returns ``(C, labels, sq_dists, n_iter)`` as tensors; labels over all rows.
    """
    import torch

    n, d = Xt.shape
    small = dev.type == "cpu" and n * k * d < _SMALL_WORK
    with torch.no_grad(), torch_threads(1 if small else None):
        return _kmeans_impl(Xt, k, n_iter=n_iter, n_init=n_init, init=init,
                            max_points_per_centroid=max_points_per_centroid, balanced=balanced,
                            balance_tolerance=balance_tolerance, gen=gen, dev=dev,
                            chunk_size=chunk_size, verbose=verbose)


def _kmeans_impl(Xt, k, *, n_iter, n_init, init, max_points_per_centroid, balanced,
                 balance_tolerance, gen, dev, chunk_size, verbose):
    import torch

    n, d = Xt.shape
    t0 = time.perf_counter()

    with torch.no_grad():
        # ---- training sample (faiss: at most max_points_per_centroid * K rows)
        if max_points_per_centroid is not None and n > int(max_points_per_centroid) * k:
            n_train = int(max_points_per_centroid) * k
            idx = np.sort(gen.choice(n, size=n_train, replace=False))
            Xtr = Xt[torch.from_numpy(idx)].to(dev)
        else:
            n_train = n
            Xtr = Xt.to(dev)
        lo, hi = _balanced_bounds(n_train, k, balance_tolerance)
        xn_tr = _sqnorms(Xtr)

        best = None
        for run in range(n_init):
            C = _initial_centroids(Xtr, k, init, gen, dev)
            # ---- Lloyd.  Balanced: unconstrained iterations first (a cheap argmin; at
            # most n_iter // 2) warm-start the centroids, then size-constrained ones;
            # each phase stops once at most CHANGE_TOL of the labels change (balanced
            # labels rarely repeat exactly).  Unbalanced: until the labels repeat.
            def lloyd(C, constrained: bool, max_iter: int, tol: float):
                prev, done = None, 0
                for _ in range(max_iter):
                    if constrained:
                        lab, dist = _balanced_assign_t(Xtr, C, lo, hi, chunk_size, xnorm=xn_tr)
                    else:
                        lab, dist = _assign_t(Xtr, C, chunk=chunk_size, xnorm=xn_tr)
                    if verbose:
                        print(f"  kmeans run {run} iter {done + 1}{' (balanced)' if constrained else ''}: "
                              f"inertia {float(dist.mean()):.6g} ({time.perf_counter() - t0:.1f}s)")
                    if prev is not None and (torch.equal(lab, prev) if tol == 0 else
                                             int((lab != prev).sum()) <= tol * n_train):
                        break
                    prev = lab
                    C, counts = _update_centroids(Xtr, lab, k, C)
                    if not constrained:
                        _repair_empty(C, Xtr, lab, dist, counts)
                    done += 1
                return C, done

            if balanced:
                C, it = lloyd(C, False, n_iter // 2, CHANGE_TOL)
                C, more = lloyd(C, True, max(n_iter - it, 1), CHANGE_TOL)
                it += more
            else:
                C, it = lloyd(C, False, n_iter, 0.0)
            if n_init > 1:
                if balanced:
                    _, dist = _balanced_assign_t(Xtr, C, lo, hi, chunk_size, xnorm=xn_tr)
                else:
                    _, dist = _assign_t(Xtr, C, chunk=chunk_size, xnorm=xn_tr)
                score = float(dist.mean(dtype=torch.float64))
            else:
                score = 0.0
            if best is None or score < best[0]:
                best = (score, C, it)
        _, C, n_done = best
        del Xtr, xn_tr

        labels, dist = _final_assignment(Xt, C, k, balanced, balance_tolerance, chunk_size)
    return C, labels, dist, int(n_done)


def _initial_centroids(Xtr, k: int, init, gen, dev):
    """(K, d) starting centroids: k-means++ or bisecting on a subsample, K random rows, or
    the given array."""
    import torch

    n_train, d = Xtr.shape
    if not isinstance(init, str):
        C = as_matrix(init, name="init").to(dev).clone()
        if tuple(C.shape) != (k, d):
            raise DataError(f"init has shape {tuple(C.shape)}, expected {(k, d)}",
                            "pass one initial centroid per cluster")
        return C
    if init == "random":
        return Xtr[torch.as_tensor(gen.choice(n_train, size=k, replace=False), device=dev)].clone()
    if init not in ("k-means++", "bisecting"):
        raise DataError(f"unknown init {init!r}", "use 'k-means++', 'bisecting', 'random' or a (K, d) array")
    # bisecting: 16 points per centroid suffice for the splits (Lloyd refines on the whole
    # sample); fewer rows make the init ~2x cheaper
    m = min(n_train, max((32 if init == "k-means++" else _BISECT_PER_CENTROID) * k, 4096))
    sub = Xtr if m == n_train else Xtr[torch.as_tensor(np.sort(gen.choice(n_train, size=m, replace=False)),
                                                       device=dev)]
    return _kmeanspp(sub, k, gen) if init == "k-means++" else _bisecting(sub, k, gen)


def _final_assignment(Xt, C, k: int, balanced: bool, balance_tolerance: float, chunk_size):
    """Every point's cluster for the final centroids (balanced: within the size bounds of
    all N points; else the nearest, with clusters the sample left empty refilled)."""
    import torch

    if balanced:
        lo, hi = _balanced_bounds(Xt.shape[0], k, balance_tolerance)
        return _balanced_assign_t(Xt, C, lo, hi, chunk_size)
    labels, dist = _assign_t(Xt, C, chunk=chunk_size)
    counts = torch.bincount(labels, minlength=k)
    for _ in range(3):  # sampling can leave a cluster empty over all points
        if bool((counts > 0).all()):
            break
        if not _repair_empty(C, Xt, labels, dist, counts):
            break
        # the refilled centroids and their donors moved: assign again
        labels, dist = _assign_t(Xt, C, chunk=chunk_size)
        counts = torch.bincount(labels, minlength=k)
    return labels, dist


def kmeans(
    X: Any,
    n_clusters: int,
    *,
    n_iter: int = 20,
    n_init: int = 1,
    init: Any = "k-means++",
    max_points_per_centroid: int | None = 256,
    balanced: bool = False,
    balance_tolerance: float = 0.1,
    random_state: int | np.random.Generator | None = 0,
    device: str = "cpu",
    chunk_size: int | None = None,
    verbose: bool = False,
) -> KMeansResult:
    """Lloyd k-means of the rows of ``X`` into ``n_clusters`` clusters.

    Parameters
    ----------
    X : (N, d) float32 numpy array or torch tensor.
    n_iter : Lloyd iterations (assign + update) per run; stops early once the
        training labels no longer change.
    n_init : restarts with different seeds; the lowest training inertia wins.
    init : ``"k-means++"`` (greedy, on at most ``max(32 K, 4096)`` training points),
        ``"bisecting"`` (splits of the largest-SSE clusters along their principal
        direction, on at most ``max(16 K, 4096)`` training points: every centroid is a
        mean of points, never an outlier; the default of the RQ-KMeans / VQ
        tokenizers), ``"random"`` (K distinct training points, as faiss) or a
        ``(K, d)`` array.
    max_points_per_centroid : train on a random sample of at most this many points
        per centroid (faiss's default 256); ``None`` trains on all points.  Labels,
        inertia and sizes are always over all points.
    balanced, balance_tolerance : size-constrained mode, see the module docstring.
    device : ``"cpu"``, ``"cuda"`` or ``"auto"``.
    chunk_size : rows per distance chunk (default: a 16 MiB ``(chunk, K)`` buffer).
    """
    import torch

    k = int(n_clusters)
    if k < 1:
        raise DataError(f"n_clusters must be >= 1, got {n_clusters}", "pass a positive cluster count")
    if n_iter < 0 or n_init < 1:
        raise DataError(f"need n_iter >= 0 and n_init >= 1, got {n_iter} and {n_init}", "use e.g. n_iter=20, n_init=1")
    if balanced and not (0.0 <= balance_tolerance < 1.0):
        raise DataError(f"balance_tolerance must be in [0, 1), got {balance_tolerance}",
                        "use e.g. 0.1 for sizes within 10% of N/K")
    dev = resolve_device(device)
    Xt = as_matrix(X, min_items=k)
    with torch.no_grad():
        C, labels, dist, n_done = kmeans_t(
            Xt, k, n_iter=n_iter, n_init=n_init, init=init,
            max_points_per_centroid=max_points_per_centroid, balanced=balanced,
            balance_tolerance=balance_tolerance, gen=make_rng(random_state), dev=dev,
            chunk_size=chunk_size, verbose=verbose)
        sizes = torch.bincount(labels, minlength=k)
        inertia = float(dist.mean(dtype=torch.float64))
    n = Xt.shape[0]
    if verbose:
        print(f"  kmeans done: K={k} N={n} inertia {inertia:.6g}")
    return KMeansResult(
        centroids=C.cpu().numpy().astype(np.float32, copy=False),
        labels=labels.cpu().numpy().astype(np.int64, copy=False),
        inertia=inertia,
        n_iter=int(n_done),
        sizes=sizes.cpu().numpy().astype(np.int64, copy=False),
    )
