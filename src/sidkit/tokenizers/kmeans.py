"""The k-means core every quantizer builds on (torch inside, numpy at the boundary).

In the spirit of faiss ``contrib/clustering.py``: small functions with named stats.

* :func:`assign` -- nearest centroid of every row, by chunked GEMM distances
  ``||x||^2 - 2 x.c + ||c||^2`` (one ``addmm`` into a preallocated ``(chunk, K)``
  buffer per chunk, then ``min``), so memory stays bounded whatever ``N``.
* :func:`kmeans` -- Lloyd's algorithm with greedy k-means++ init (on a sample),
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
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from ..utils import resolve_device, rng as make_rng

__all__ = ["KMeansResult", "kmeans", "assign", "as_matrix", "imbalance_factor"]

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
def as_matrix(X: Any, *, name: str = "X", min_items: int = 1):
    """Validate ``X`` (numpy array or torch tensor) and return a float32 C-contiguous
    CPU-or-device torch tensor sharing memory with ``X`` when possible.

    The NaN/inf check is a float64 sum (no ``N x d`` boolean temporary); only when the
    sum is not finite is the offending row searched for.
    """
    import torch

    if isinstance(X, torch.Tensor):
        t = X.detach()
    else:
        try:
            arr = np.asarray(X)
        except Exception as e:  # pragma: no cover - exotic inputs
            raise DataError(f"{name} cannot be converted to an array: {e}") from e
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise DataError(f"{name} must be numeric, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
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
    if not math.isfinite(float(t.sum(dtype=torch.float64))):
        bad = ~torch.isfinite(t).all(dim=1)
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten()
            raise DataError(
                f"{name} has NaN or inf values in {rows.numel()} row(s), first at row {int(rows[0])}",
                "drop or re-embed those items",
            )
    if t.shape[0] < min_items:
        raise DataError(
            f"{name} has {t.shape[0]} items but {min_items} clusters/codewords were requested "
            "(more clusters than items)",
            "use fewer clusters (smaller codebook sizes) or more items",
        )
    return t


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


def _assign_t(X, C, *, cnorm=None, rows=None, chunk: int | None = None, with_dist=True):
    """Nearest centroid for ``X`` (or ``X[rows]``) -> (labels int64, sq. distances).

    ``cnorm`` may carry ``inf`` to mask centroids.  ``X`` may live on the CPU while
    ``C`` lives on a GPU: chunks are moved one at a time.
    """
    import torch

    dev = C.device
    k = C.shape[0]
    n = X.shape[0] if rows is None else rows.numel()
    chunk = min(_chunk_rows(k, chunk), max(n, 1))
    if cnorm is None:
        cnorm = torch.linalg.vector_norm(C, dim=1).square_()
    Ct = C.t()
    labels = torch.empty(n, dtype=torch.int64, device=dev)
    dist = torch.empty(n, dtype=torch.float32, device=dev)
    buf = torch.empty(chunk, k, dtype=torch.float32, device=dev)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        xs = X[s:e] if rows is None else X[rows[s:e]]
        if xs.device != dev:
            xs = xs.to(dev, non_blocking=True)
        b = buf[: e - s]
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
            dist[s:e] += torch.linalg.vector_norm(xs, dim=1).square_()
    if with_dist:
        dist.clamp_(min=0.0)
    return labels, dist


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
def _group_rank_t(keys):
    """For each position, its rank among equal ``keys`` in current order (torch)."""
    import torch

    n = keys.numel()
    if n == 0:
        return keys.clone()
    perm = torch.sort(keys, stable=True).indices
    sk = keys[perm]
    pos = torch.arange(n, device=keys.device)
    is_start = torch.ones(n, dtype=torch.bool, device=keys.device)
    is_start[1:] = sk[1:] != sk[:-1]
    start = torch.cummax(torch.where(is_start, pos, torch.zeros_like(pos)), dim=0).values
    rank = torch.empty_like(pos)
    rank[perm] = pos - start
    return rank


def _update_centroids(X, labels, k, C_old):
    """Means of the members; clusters without members keep their old centroid."""
    import torch

    counts = torch.bincount(labels, minlength=k)
    if X.device.type == "cpu":
        # a (K, N) 0/1 CSR matrix times X: faster than torch's CPU index_add_, which
        # is slow on small inputs with several threads and ~4x slower at 64k x 384
        import scipy.sparse as sp

        n = X.shape[0]
        lab = labels.numpy()
        oh = sp.csr_matrix((np.ones(n, dtype=np.float32), (lab, np.arange(n))), shape=(k, n))
        sums = torch.from_numpy(np.asarray(oh @ X.numpy(), dtype=np.float32))
    else:
        sums = torch.zeros(k, X.shape[1], dtype=torch.float32, device=X.device)
        sums.index_add_(0, labels, X)
    nz = counts > 0
    C = C_old.clone()
    C[nz] = sums[nz] / counts[nz].unsqueeze(1).to(torch.float32)
    return C, counts


def _repair_empty(C, X, labels, dist, counts) -> int:
    """Split the largest clusters to refill empty ones (in place on ``C``).

    For each empty cluster (in index order) the currently largest cluster is the
    donor; the empty centroid moves onto the donor member farthest from the donor's
    centroid (the next farthest when a donor is used again), and the donor's size is
    halved for the next choice.  A centroid placed on a data point owns at least
    that point at the next assignment (unless it has an exact duplicate centroid),
    so no cluster stays empty when there are at least K distinct points.
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
        C[e] = X[row].to(C.device)
        sizes[j] /= 2.0
        sizes[e] = sizes[j]
        n_fixed += 1
    return n_fixed


def _kmeanspp(X, k: int, gen: np.random.Generator, n_local_trials: int | None = None):
    """Greedy k-means++ (as scikit-learn): at each step sample ``2 + log K`` candidates
    proportionally to D^2 and keep the one that lowers the potential most."""
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


def _balanced_bounds(n: int, k: int, tol: float) -> tuple[int, int]:
    t = n / k
    hi = max(math.ceil(t), math.floor((1.0 + tol) * t + 1e-9))
    lo = min(math.floor(t), math.ceil((1.0 - tol) * t - 1e-9))
    return max(lo, 0), hi


def _balanced_assign_t(X, C, lo: int, hi: int, chunk: int | None = None):
    """Capacity-constrained assignment with every size in [lo, hi] (see module doc)."""
    import torch

    dev = C.device
    n, k = X.shape[0], C.shape[0]
    cnorm = torch.linalg.vector_norm(C, dim=1).square_()
    labels = torch.full((n,), -1, dtype=torch.int64, device=dev)
    dist = torch.zeros(n, dtype=torch.float32, device=dev)
    remaining = torch.full((k,), hi, dtype=torch.int64, device=dev)
    pending = None  # None = all rows (avoid gathering a copy of X)
    inf = torch.tensor(float("inf"), device=dev)
    # ---- phase 1: capacity hi, greedy in distance order
    while True:
        cn = torch.where(remaining > 0, cnorm, inf)
        lab, d = _assign_t(X, C, cnorm=cn, rows=pending, chunk=chunk)
        idx = torch.arange(n, device=dev) if pending is None else pending.to(dev)
        o = torch.argsort(d, stable=True)
        lab_o = lab[o]
        rank = _group_rank_t(lab_o)
        acc_o = rank < remaining[lab_o]
        acc = torch.empty_like(acc_o)
        acc[o] = acc_o
        labels[idx[acc]] = lab[acc]
        dist[idx[acc]] = d[acc]
        remaining -= torch.bincount(lab[acc], minlength=k)
        rej = idx[~acc]
        if rej.numel() == 0:
            break
        pending = rej.to(X.device)
    sizes = torch.bincount(labels, minlength=k)
    # ---- phase 2: lift clusters below lo with the cheapest moves from donors
    while bool((sizes < lo).any()):
        under = torch.nonzero(sizes < lo).flatten()
        deficit = lo - sizes[under]
        movable = torch.nonzero(sizes[labels] > lo).flatten()
        if movable.numel() == 0:  # pragma: no cover - impossible when K*lo <= N
            break
        sub, d_u = _assign_t(X, C[under], rows=movable.to(X.device), chunk=chunk)
        cost = d_u - dist[movable]
        o = torch.argsort(cost, stable=True)
        sub_o = sub[o]
        acc_o = _group_rank_t(sub_o) < deficit[sub_o]
        # each donor gives away at most its surplus
        mv_o = movable[o]
        donor_o = labels[mv_o]
        surplus = sizes - lo
        cand = torch.nonzero(acc_o).flatten()  # still in cost order
        keep = _group_rank_t(donor_o[cand]) < surplus[donor_o[cand]]
        take = cand[keep]
        rows = mv_o[take]
        new = under[sub_o[take]]
        sizes -= torch.bincount(labels[rows], minlength=k)
        sizes += torch.bincount(new, minlength=k)
        labels[rows] = new
        dist[rows] = d_u[o][take]
    return labels, dist


# ----------------------------------------------------------------- k-means
def _kmeans_t(Xt, k: int, *, n_iter: int, n_init: int, init: Any,
              max_points_per_centroid: int | None, balanced: bool, balance_tolerance: float,
              gen: np.random.Generator, dev, chunk_size: int | None = None,
              verbose: bool = False):
    """Core of :func:`kmeans` on a validated ``Xt``: anything with ``shape``,
    ``device`` and row indexing (a tensor or a lazy residual view).

    Returns ``(C, labels, sq_dists, n_iter)`` as tensors; labels over all rows.
    """
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

        best = None
        for run in range(n_init):
            # ---- init
            if isinstance(init, str):
                if init == "k-means++":
                    m = min(n_train, max(64 * k, 10000))
                    sub = Xtr if m == n_train else Xtr[torch.as_tensor(
                        np.sort(gen.choice(n_train, size=m, replace=False)), device=dev)]
                    C = _kmeanspp(sub, k, gen)
                elif init == "random":
                    C = Xtr[torch.as_tensor(gen.choice(n_train, size=k, replace=False),
                                            device=dev)].clone()
                else:
                    raise DataError(f"unknown init {init!r}",
                                    "use 'k-means++', 'random' or a (K, d) array")
            else:
                C = as_matrix(init, name="init").to(dev).clone()
                if tuple(C.shape) != (k, d):
                    raise DataError(f"init has shape {tuple(C.shape)}, expected {(k, d)}",
                                    "pass one initial centroid per cluster")
            # ---- Lloyd
            prev = None
            it = 0
            for it in range(1, n_iter + 1):
                if balanced:
                    lab, dist = _balanced_assign_t(Xtr, C, lo, hi, chunk_size)
                else:
                    lab, dist = _assign_t(Xtr, C, chunk=chunk_size)
                if verbose:
                    print(f"  kmeans run {run} iter {it}: inertia {float(dist.mean()):.6g} "
                          f"({time.perf_counter() - t0:.1f}s)")
                if prev is not None and torch.equal(lab, prev):
                    it -= 1
                    break
                prev = lab
                C, counts = _update_centroids(Xtr, lab, k, C)
                if not balanced:
                    _repair_empty(C, Xtr, lab, dist, counts)
            if n_init > 1:
                if balanced:
                    _, dist = _balanced_assign_t(Xtr, C, lo, hi, chunk_size)
                else:
                    _, dist = _assign_t(Xtr, C, chunk=chunk_size)
                score = float(dist.mean(dtype=torch.float64))
            else:
                score = 0.0
            if best is None or score < best[0]:
                best = (score, C, it)
        _, C, n_done = best
        del Xtr

        # ---- final assignment of ALL points
        if balanced:
            lo_all, hi_all = _balanced_bounds(n, k, balance_tolerance)
            labels, dist = _balanced_assign_t(Xt, C, lo_all, hi_all, chunk_size)
        else:
            labels, dist = _assign_t(Xt, C, chunk=chunk_size)
            counts = torch.bincount(labels, minlength=k)
            for _ in range(3):  # sampling can leave a cluster empty over all points
                if bool((counts > 0).all()):
                    break
                empty = torch.nonzero(counts == 0).flatten()
                if not _repair_empty(C, Xt, labels, dist, counts):
                    break
                # only the moved centroids changed: compare every point against them
                sub, d_new = _assign_t(Xt, C[empty], chunk=chunk_size)
                better = d_new < dist
                labels[better] = empty[sub[better]]
                dist[better] = d_new[better]
                counts = torch.bincount(labels, minlength=k)
    return C, labels, dist, int(n_done)


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
    init : ``"k-means++"`` (greedy, on at most ``max(64 K, 10000)`` training points),
        ``"random"`` (K distinct training points, as faiss) or a ``(K, d)`` array.
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
        raise DataError(f"need n_iter >= 0 and n_init >= 1, got {n_iter} and {n_init}")
    if balanced and not (0.0 <= balance_tolerance < 1.0):
        raise DataError(f"balance_tolerance must be in [0, 1), got {balance_tolerance}",
                        "use e.g. 0.1 for sizes within 10% of N/K")
    dev = resolve_device(device)
    Xt = as_matrix(X, min_items=k)
    with torch.no_grad():
        C, labels, dist, n_done = _kmeans_t(
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
