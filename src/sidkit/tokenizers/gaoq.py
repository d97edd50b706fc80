"""GAOQ (ReSID): globally aligned orthogonal quantization.

Algorithm
--------------------
* Level 1: balanced k-means of all items into ``b_1`` groups
  (:func:`sidkit.tokenizers.kmeans.kmeans`, faiss-style sampling).
* Level ``l`` (``2 <= l <= L-1``): inside every parent node, balanced k-means of its
  items into ``b_l`` children (a parent with at most ``b_l`` items gets one child per
  item).  All parents of a level are clustered together by
  :func:`batched_balanced_kmeans` (padded ``(parents, items, d)`` tensors, one GEMM per
  Lloyd step for every parent, the same size-constrained assignment rule as
  :mod:`~sidkit.tokenizers.kmeans`), in blocks that bound memory; each Lloyd phase
  stops once at most ``CHANGE_TOL`` (0.3%) of the labels change.
* Alignment: the child centroids are centred on their parent centroid (the catalogue
  mean for level 1) and matched one-to-one to ``g_l >= b_l`` anchor directions shared
  by every parent, maximising the total cosine with the Hungarian algorithm
  (:func:`scipy.optimize.linear_sum_assignment`; the cosines and the anchors' QR are
  computed with torch on one thread -- numpy's threaded OpenBLAS took up to ~0.2 s per
  small call on a busy 2-core machine).  The child's token is its anchor's
  index, so token ``t`` at level ``l`` means "direction ``t``" under every parent.
  Anchors are the columns of ``Q`` from a QR decomposition of a seeded Gaussian
  ``d x g_l`` matrix: exactly orthonormal when ``g_l <= d``; when ``g_l > d`` they are
  built block by block (``d`` orthonormal columns per block), hence only
  approximately orthogonal across blocks.
* Last level: ``b_L = ceil(N / (b_1 ... b_{L-1}))`` (raised to the largest leaf when
  balancing is inexact) enumerates the items of a leaf, nearest to the leaf centroid
  first, so codes of the training items are collision-free by construction.

Automatic branching (``branching=None``): ``b_1 * ... * b_{L-1} ~ N / 15`` split evenly
over the levels (the paper's rule ``b_1 b_2 ~ N/10 .. N/20``; its examples are
(32, 40, 19) for ~24k items and (256, 256, 8) for ~500k).  The chosen branching is
reported in ``branching_`` and in ``Codes.params["branching"]``.

Encoding
--------
``encode`` routes every row down the tree by nearest child centroid (levels
``1..L-1``).  A catalogue item -- a row within ``MATCH_RTOL`` of a fitted item on
the same route (:class:`~sidkit.tokenizers.collisions.CatalogueIndex`: a small
fingerprint per item, no ``N x d`` copy of the catalogue) -- gets its fit-time SID
whatever else is in the batch, even when the balanced fit put it in another leaf
than its nearest one.  A new item gets the next free last token of its leaf
(leaf size + rank among the batch's new items in that leaf): a SID no catalogue item
holds (``params["n_unseen"]``, ``params["unseen_rule"]``).  :meth:`GAOQ.encode_new`
also records the new items.

Decoding: the centroid of the deepest tree node the SID's clustering tokens reach
(the leaf centroid for a full path); the last token only enumerates the leaf's
items and is ignored.  The fitted tokenizer stores the tree (centroids, anchors) and
the item -> SID table, never the catalogue embeddings.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from ..types import PAD, Codes
from ..utils import progress, resolve_device, rng
from .base import Bool, Device, Int, Ints, Real, Tokenizer, check_embeddings, register
from .collisions import CATALOGUE_ATTRS, CatalogueIndex, catalogue_codes, run_ranks
from .kmeans import CHANGE_TOL, batched_balanced_assign, torch_threads
from .rqvae import codes_array

__all__ = ["GAOQ", "auto_branching", "make_anchors", "batched_balanced_kmeans"]

#: items per leaf the automatic branching aims at (rule: N/10 .. N/20 leaves)
ITEMS_PER_LEAF = 15
UNSEEN_RULE = "next_free_in_leaf"


def auto_branching(n_items: int, n_levels: int = 3, items_per_leaf: float = ITEMS_PER_LEAF) -> tuple[int, ...]:
    """Branching ``(b_1, ..., b_{L-1})`` of the clustering levels for ``n_items`` items.

    Aims at ``prod(b) ~ n_items / items_per_leaf`` (default 15, inside the paper's
    ``N/10 .. N/20`` rule) split evenly across levels; every ``b_l >= 2`` (and
    ``b_1 <= n_items``).  The last level (``ceil(N / prod(b))``) is not included.
    """
    n_items, n_levels = int(n_items), int(n_levels)
    if n_levels < 2:
        raise DataError(f"GAOQ needs n_levels >= 2, got {n_levels}",
                        "use n_levels=3 (two clustering levels + the enumeration level)")
    target = max(n_items / float(items_per_leaf), 1.0)
    out = []
    for m in range(n_levels - 1, 0, -1):
        b = max(2, int(round(target ** (1.0 / m))))
        out.append(b)
        target = max(target / b, 1.0)
    out[0] = max(1, min(out[0], n_items))
    return tuple(out)


def make_anchors(dim: int, n_anchors: int, random_state: Any = 0) -> np.ndarray:
    """``(n_anchors, dim)`` unit anchor directions from QR of seeded Gaussian matrices.

    Orthonormal (``A A^T = I``) when ``n_anchors <= dim``; otherwise built in blocks of
    ``dim`` orthonormal rows, approximately orthogonal across blocks.
    """
    import torch

    gen = rng(random_state)
    blocks, left = [], int(n_anchors)
    while left > 0:
        g = min(left, int(dim))
        # torch's QR on one thread: numpy's multi-threaded OpenBLAS QR of this small
        # matrix took ~0.2 s instead of ~1 ms on a busy 2-core machine
        with torch_threads(1):
            q, r = (t.numpy() for t in torch.linalg.qr(torch.from_numpy(gen.standard_normal((int(dim), g)))))
        q = q * np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))[None, :]  # unique QR
        blocks.append(q.T)
        left -= g
    A = np.concatenate(blocks, 0)
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    return A.astype(np.float32)


def _anchor_tokens(C: np.ndarray, parent_centroid: np.ndarray, At_T):
    """The tokens of a parent's ``k`` children: the anchors (columns of ``At_T``, (d, g))
    matched one-to-one to the children's directions from the parent's centroid, maximising
    the summed cosine (Hungarian).  Returns ``(tokens, cosines (k, g), rows, cols)``."""
    import torch
    from scipy.optimize import linear_sum_assignment

    D = C - parent_centroid[None, :]
    Dn = D / np.maximum(np.linalg.norm(D, axis=1, keepdims=True), 1e-12)
    with torch_threads(1):  # torch, one thread: numpy's threaded OpenBLAS took
        # up to ~20 ms per small product on a busy 2-core machine
        S = (torch.from_numpy(np.ascontiguousarray(Dn, np.float32)) @ At_T).numpy()
    rows, cols = linear_sum_assignment(S, maximize=True)
    tok = np.empty(C.shape[0], np.int64)
    tok[rows] = cols
    return tok, S, rows, cols


def _leaf_ranks(X: np.ndarray, leaf: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The last level: each item's rank within its leaf, nearest the leaf's centroid first
    (ties by item order)."""
    dist = ((X - centroids[leaf]) ** 2).sum(1)
    o = np.lexsort((dist, leaf))
    sl = leaf[o]
    out = np.empty(len(leaf), np.int64)
    out[o] = run_ranks(np.r_[True, sl[1:] != sl[:-1]])
    return out


# ------------------------------------------------------- batched balanced k-means


def _one_thread(device):
    """Run torch CPU ops on one thread inside the block (restored afterwards).

    The assignment rounds and centroid updates are many small, memory-bound ops for
    which a thread-pool round trip per op costs more than the op (badly so on a busy
    machine: ~7x slower updates on 2 shared cores); the GEMMs stay parallel.  No-op
    on GPU.
    """
    return torch_threads(1 if getattr(device, "type", str(device)) == "cpu" else None)


def batched_balanced_kmeans(Xp, valid, k: int, *, n_iter: int = 20, tol: float = 0.1,
                            random_state: int = 0):
    """Balanced k-means of P groups at once (one group per parent node).

    ``Xp`` (P, m, d) float32 torch tensor, rows padded past each group's size with
    ``valid`` (P, m) False; every group must hold more than ``k`` items.  Seeding with
    ``k`` distinct random rows per group (faiss's default; on clustered data it matched
    k-means++ seeding in final inertia, at a constant number of tensor ops instead of
    ``O(k)``), then Lloyd iterations: unconstrained ones (at most ``n_iter // 2``)
    warm-start the centroids, then iterations with the size-constrained assignment
    of :func:`~sidkit.tokenizers.kmeans.batched_balanced_assign`; each phase stops once at most ``CHANGE_TOL``
    of the labels change.  Final sizes lie within ``tol`` of ``n_p / k``.
    Returns centroids (P, k, d) and labels (P, m) (-1 on padding).
    """
    import torch

    from ..utils import torch_generator

    P, m, d = Xp.shape
    dev = Xp.device
    counts = valid.sum(1)
    n_valid = int(counts.sum())
    t = counts.double() / k
    hi = torch.maximum(torch.ceil(t), torch.floor((1.0 + tol) * t + 1e-9)).long()
    lo = torch.minimum(torch.floor(t), torch.ceil((1.0 - tol) * t - 1e-9)).long().clamp_min(0)
    gen = torch_generator(random_state, device=dev)
    ar = torch.arange(P, device=dev)
    xn = (Xp * Xp).sum(-1)
    # ---- seeding: k distinct random rows of each group (faiss's default init), then
    # a few unconstrained Lloyd steps; a constant number of tensor ops whatever k
    r = torch.rand((P, m), generator=gen, device=dev) + (~valid).to(Xp.dtype) * 2.0
    seeds = torch.argsort(r, dim=1)[:, :k]
    C = torch.gather(Xp, 1, seeds[:, :, None].expand(P, k, d)).clone()
    # ---- Lloyd: unconstrained iterations first (cheap argmin, at most half of
    # n_iter), then balanced ones; each phase stops once labels settle
    def sqdist(C):  # |c|^2 - 2 x.c: the row constant |x|^2 is left out (see assign)
        cn = (C * C).sum(-1)[:, None, :]
        return torch.baddbmm(cn, Xp, C.transpose(1, 2), alpha=-2.0)

    gkey_base = ar[:, None] * k
    Xv = Xp[valid]  # the real rows, in (group, row) order

    def lloyd(C, balanced: bool, max_iter: int):
        prev = None
        for it in range(max_iter):
            dist = sqdist(C)  # the GEMM runs on all threads, the rest on one
            with _one_thread(dev):
                if balanced:
                    labels, _ = batched_balanced_assign(dist, valid, lo, hi, xn)
                else:
                    labels = dist.argmin(-1).masked_fill_(~valid, -1)
                if prev is not None and int((labels != prev).sum()) <= CHANGE_TOL * n_valid:
                    return C, labels, it + 1  # converged: labels match C
                prev = labels
                key = (gkey_base + labels.clamp_min(0))[valid]
                sums = torch.zeros((P * k, d), dtype=Xp.dtype, device=dev).index_add_(0, key, Xv)
                cnt = torch.bincount(key, minlength=P * k).view(P, k)
                newC = sums.view(P, k, d) / cnt.clamp_min(1)[:, :, None].to(Xp.dtype)
                C = torch.where((cnt > 0)[:, :, None], newC, C)
        return C, None, max_iter

    n_iter = max(int(n_iter), 1)
    C, _, used = lloyd(C, False, n_iter // 2)
    C, labels, _ = lloyd(C, True, max(n_iter - used, 1))
    if labels is None:  # not converged: the balanced assignment for the final centroids
        dist = sqdist(C)
        with _one_thread(dev):
            labels, _ = batched_balanced_assign(dist, valid, lo, hi, xn)
    return C, labels


@register
class GAOQ(Tokenizer):
    """Globally aligned orthogonal quantization (ReSID).

    Parameters
    ----------
    branching : ``(b_1, ..., b_{L-1})`` children per node of the clustering levels
        (the paper's tuple (32, 40, 19) is ``branching=(32, 40)``: the last level is
        always ``ceil(N / prod(b))``, raised to the largest leaf).  ``None``: automatic
        from N (:func:`auto_branching`).
    n_levels : SID length L when ``branching`` is None (default 3).
    n_anchors : anchors per clustering level ``g_l >= b_l`` (default ``g_l = b_l``);
        codebook size of level ``l`` is ``g_l``.
    balance_tolerance : cluster sizes within this fraction of the mean (balanced k-means).
    n_iter : Lloyd iterations per k-means (at most).  Every level runs unconstrained
        iterations first (at most ``n_iter // 2``), then balanced ones; each phase stops
        once at most 0.3% of the labels change (``CHANGE_TOL = 3e-3``; was 0.1%: about
        one iteration fewer per phase, level-2 inertia within +0.3% on clustered data,
        balance bounds unchanged).
    max_points_per_centroid : training-sample cap of the level-1 k-means (faiss-style);
        deeper levels train on all items of each parent.
    random_state : seeds the anchors and every k-means.
    device, verbose : k-means device (``"auto"``/``"cpu"``/``"cuda"``), progress bar.

    Fitted attributes
    -----------------
    branching_, codebook_sizes_, anchors_ (sum g_l, d), node_centroids_, node_parent_,
    node_token_, node_level_ (the tree; level-1 nodes have parent -1), root_ (catalogue
    mean), ``catalogue_*`` (the item -> SID table and per-item fingerprints, see
    :class:`~sidkit.tokenizers.collisions.CatalogueIndex`; no ``N x d`` array),
    codes_ (the catalogue SIDs in item order, a view of ``catalogue_sids_``),
    alignment_ (per clustering level: number of parents, mean cosine of the centred
    children with their anchor and with a random anchor, seconds spent).
    """

    name = "gaoq"
    prefix_conditional = True
    _state_attrs = ("branching_", "codebook_sizes_", "anchors_", "node_centroids_",
                    "node_parent_", "node_token_", "node_level_", "root_", *CATALOGUE_ATTRS)
    _parameter_constraints = {
        "branching": [None, Ints(ge=2)], "n_levels": [None, Int(ge=2)],
        "n_anchors": [None, Ints(ge=2)], "balance_tolerance": [Real(ge=0, lt=1)],
        "n_iter": [Int(ge=1)], "max_points_per_centroid": [None, Int(ge=1)],
        "random_state": [None, Int(ge=0)], "device": [Device()], "verbose": [Bool()],
    }

    @property
    def codes_(self) -> np.ndarray:
        """SIDs of the fitted catalogue's items, in item order."""
        self._check_fitted()
        return self.catalogue_sids_

    def __init__(
        self,
        branching: Sequence[int] | None = None,
        n_levels: int | None = None,
        n_anchors: Sequence[int] | None = None,
        balance_tolerance: float = 0.1,
        n_iter: int = 20,
        max_points_per_centroid: int | None = 256,
        random_state: int | None = 0,
        device: str = "auto",
        verbose: bool = False,
    ):
        self._store_params(locals())

    # ------------------------------------------------------------ parameters
    def _resolve_branching(self, n: int) -> tuple[int, ...]:
        if self.branching is None:
            L = 3 if self.n_levels is None else self.n_levels
            if not isinstance(L, (int, np.integer)) or L < 2:
                raise DataError(f"n_levels must be an integer >= 2, got {L!r}",
                                "use n_levels=3 (two clustering levels + the enumeration level)")
            return auto_branching(n, int(L))
        try:
            b = tuple(int(v) for v in self.branching)
        except (TypeError, ValueError):
            raise DataError(f"branching must be a list of integers, got {self.branching!r}",
                            "pass e.g. branching=[32, 40] or None for automatic") from None
        if not b or min(b) < 1:
            raise DataError(f"branching entries must be positive, got {list(b)}",
                            "pass e.g. branching=[32, 40] or None for automatic")
        if self.n_levels is not None and int(self.n_levels) != len(b) + 1:
            raise DataError(
                f"branching {list(b)} gives {len(b) + 1} levels but n_levels={self.n_levels}",
                "branching lists the clustering levels only (L-1 entries); drop n_levels")
        if b[0] > n:
            raise DataError(f"branching b_1={b[0]} exceeds the number of items ({n})",
                            "use a smaller b_1 or branching=None")
        return b

    def _resolve_anchors(self, b: tuple[int, ...]) -> tuple[int, ...]:
        if self.n_anchors is None:
            return b
        g = tuple(int(v) for v in self.n_anchors)
        if len(g) != len(b) or any(gi < bi for gi, bi in zip(g, b)):
            raise DataError(f"n_anchors {list(g)} must have one entry >= b_l per clustering "
                            f"level (branching {list(b)})", "use n_anchors=None (g_l = b_l)")
        return g

    # --------------------------------------------------------------- fitting
    def fit(self, X: Any, y: Any = None) -> "GAOQ":
        from .kmeans import kmeans

        self._check_params()
        if not (isinstance(self.balance_tolerance, (int, float)) and 0 <= self.balance_tolerance < 1):
            raise DataError(f"balance_tolerance must be in [0, 1), got {self.balance_tolerance!r}",
                            "use e.g. 0.1 for sizes within 10% of the mean")
        X = check_embeddings(X, min_items=2)
        n, d = X.shape
        b = self._resolve_branching(n)
        g = self._resolve_anchors(b)
        L = len(b) + 1
        gen = rng(self.random_state)
        anchors = [make_anchors(d, gl, gen) for gl in g]
        import torch

        Xt = torch.from_numpy(X).to(resolve_device(self.device))

        root = X.mean(0, dtype=np.float64).astype(np.float32)
        cents: list[np.ndarray] = []
        parents: list[np.ndarray] = []
        tokens: list[np.ndarray] = []
        levels: list[np.ndarray] = []
        codes = np.empty((n, L), dtype=np.int64)
        item_node = np.full(n, -1, dtype=np.int64)
        node_cent_all = np.zeros((0, d), np.float32)
        next_id = 0
        align = []
        for l in range(L - 1):
            t_level = time.perf_counter()
            A = anchors[l]
            At_T = torch.from_numpy(A).T
            order = np.argsort(item_node, kind="stable")
            keys = item_node[order]
            uniq, starts = np.unique(keys, return_index=True)
            ends = np.r_[starts[1:], n]
            seeds = gen.integers(0, 2**31 - 1, size=uniq.size)
            new_node = np.empty(n, dtype=np.int64)
            lvl_c, lvl_p, lvl_t = [], [], []
            cos_match, cos_rand = [], []
            it = progress(range(uniq.size), desc=f"gaoq level {l + 1}", total=uniq.size,
                          enabled=None if self.verbose else False)
            clusters = self._cluster_parents(X, Xt, order, starts, ends, int(b[l]), seeds, kmeans)
            for j in it:
                p = int(uniq[j])
                idx = order[starts[j]:ends[j]]
                C, lab = clusters[j]
                k = C.shape[0]
                tok, S, rows, cols = _anchor_tokens(C, root if p < 0 else node_cent_all[p], At_T)
                ids = next_id + np.arange(k)
                next_id += k
                new_node[idx] = ids[lab]
                codes[idx, l] = tok[lab]
                lvl_c.append(C.astype(np.float32))
                lvl_p.append(np.full(k, p, np.int64))
                lvl_t.append(tok)
                if k > 1:
                    cos_match.append(S[rows, cols])
                    cos_rand.append(S.mean(1))
            cents.extend(lvl_c)
            parents.extend(lvl_p)
            tokens.extend(lvl_t)
            levels.append(np.full(sum(len(t) for t in lvl_t), l, np.int64))
            node_cent_all = np.concatenate([node_cent_all, *lvl_c], 0)
            item_node = new_node
            cm = np.concatenate(cos_match) if cos_match else np.zeros(0)
            cr = np.concatenate(cos_rand) if cos_rand else np.zeros(0)
            align.append({"level": l, "n_parents": int(uniq.size),
                          "matched_cosine": float(cm.mean()) if cm.size else None,
                          "random_anchor_cosine": float(cr.mean()) if cr.size else None,
                          "seconds": round(time.perf_counter() - t_level, 4)})

        codes[:, L - 1] = _leaf_ranks(X, item_node, node_cent_all)
        prod = int(np.prod(b, dtype=np.float64))
        b_last = max(int(math.ceil(n / prod)), int(codes[:, L - 1].max()) + 1)

        self.n_features_in_ = int(d)
        self.branching_ = np.asarray(b, np.int64)
        self.codebook_sizes_ = np.asarray([*g, b_last], np.int64)
        self.anchors_ = np.concatenate(anchors, 0)
        self.node_centroids_ = node_cent_all
        self.node_parent_ = np.concatenate(parents)
        self.node_token_ = np.concatenate(tokens)
        self.node_level_ = np.concatenate(levels)
        self.root_ = root
        self.alignment_ = align
        self._cache = None
        # the item -> SID table, keyed by each item's nearest-child route (the balanced
        # fit can put an item in another leaf than its nearest one)
        route = self._route(X)
        CatalogueIndex().fit(X, route, codes, random_state=self.random_state).to_owner(self)
        return self

    #: padded (parents x items x clusters) distance elements per batched k-means call
    _BATCH_ELEMS = 1 << 24

    def _cluster_parents(self, X, Xt, order, starts, ends, b, seeds, kmeans):
        """``(centroids, labels)`` of every parent's items, in parent order.

        A single parent (level 1) uses :func:`~sidkit.tokenizers.kmeans.kmeans`
        (balanced, with faiss-style sampling); deeper levels run one batched balanced
        k-means over blocks of parents (:func:`batched_balanced_kmeans`).  A parent
        with at most ``b`` items gets one child per item (one child if it has one item).
        """
        import torch

        sizes = ends - starts
        out: list[Any] = [None] * sizes.size
        big = []
        for j, nj in enumerate(sizes):
            idx = order[starts[j]:ends[j]]
            if nj == 1:
                out[j] = (X[idx].copy(), np.zeros(1, np.int64))
            elif nj <= b:
                out[j] = (X[idx].copy(), np.arange(nj, dtype=np.int64))
            elif sizes.size == 1:
                res = kmeans(X[idx] if idx.size < X.shape[0] else X, b, n_iter=int(self.n_iter),
                             balanced=True, balance_tolerance=float(self.balance_tolerance),
                             max_points_per_centroid=self.max_points_per_centroid,
                             random_state=int(seeds[j]), device=self.device)
                if idx.size == X.shape[0]:  # labels refer to X's rows, reorder to idx
                    out[j] = (res.centroids, res.labels[idx])
                else:
                    out[j] = (res.centroids, res.labels)
            else:
                big.append(j)
        if not big:
            return out
        big = np.asarray(big)
        # blocks of parents whose padded distance tensor stays under _BATCH_ELEMS
        block, blocks, m = [], [], 0
        for j in big:
            m_new = max(m, int(sizes[j]))
            if block and (len(block) + 1) * m_new * b > self._BATCH_ELEMS:
                blocks.append(block)
                block, m_new = [], int(sizes[j])
            block.append(j)
            m = m_new
        blocks.append(block)
        dev = Xt.device
        for bi, blk in enumerate(blocks):
            blk = np.asarray(blk)
            cnt = sizes[blk]
            m = int(cnt.max())
            ar = np.arange(m)
            valid = ar[None, :] < cnt[:, None]
            rows = order[np.where(valid, starts[blk][:, None] + ar[None, :], starts[blk][:, None])]
            rows_t = torch.from_numpy(rows).to(dev)
            valid_t = torch.from_numpy(valid).to(dev)
            Xp = Xt[rows_t] * valid_t[:, :, None].to(Xt.dtype)
            with torch.no_grad():
                C, lab = batched_balanced_kmeans(Xp, valid_t, b, n_iter=int(self.n_iter),
                                                 tol=float(self.balance_tolerance),
                                                 random_state=int(seeds[blk[0]]))
            C, lab = C.cpu().numpy(), lab.cpu().numpy()
            for q, j in enumerate(blk):
                out[j] = (C[q].astype(np.float32), lab[q, :cnt[q]].astype(np.int64))
        return out

    # ------------------------------------------------------------- accessors
    def anchors(self, level: int) -> np.ndarray:
        """``(g_l, d)`` anchor directions of clustering level ``level`` (0-based)."""
        self._check_fitted()
        g = np.asarray(self.codebook_sizes_[:-1])
        off = np.r_[0, np.cumsum(g)]
        return self.anchors_[off[level]:off[level + 1]]

    def _tables(self) -> dict[str, Any]:
        """Lookup tables derived from the fitted tree (cached)."""
        c = getattr(self, "_cache", None)
        if c is not None and c["parent"] is self.node_parent_:
            return c
        G = int(self.codebook_sizes_.max()) + 1
        node_key = (self.node_parent_ + 1) * G + self.node_token_
        korder = np.argsort(node_key, kind="stable")
        c = {"parent": self.node_parent_, "G": G, "node_key_sorted": node_key[korder],
             "node_order": korder}
        self._cache = c
        return c

    def _child(self, parent: np.ndarray, token: np.ndarray) -> np.ndarray:
        """Node id of (parent, token), -1 where no such child exists."""
        t = self._tables()
        key = (parent + 1) * t["G"] + token
        ks = t["node_key_sorted"]
        pos = np.minimum(np.searchsorted(ks, key), max(ks.size - 1, 0))
        ok = (ks.size > 0) & (ks[pos] == key) & (token >= 0) & (parent >= -1)
        return np.where(ok, t["node_order"][pos], -1)

    # --------------------------------------------------------------- encoding
    def _route(self, X: np.ndarray) -> np.ndarray:
        """Clustering tokens (N, L-1) of the nearest child centroid at every level."""
        from .kmeans import assign

        n = X.shape[0]
        L = len(self.codebook_sizes_)
        out = np.empty((n, L - 1), dtype=np.int64)
        lvl = self.node_level_
        top = np.flatnonzero(lvl == 0)
        lab, _ = assign(X, self.node_centroids_[top])
        node = top[lab]
        out[:, 0] = self.node_token_[node]
        for l in range(1, L - 1):
            cand = np.flatnonzero(lvl == l)
            par = self.node_parent_[cand]
            po = np.argsort(par, kind="stable")
            cand, par = cand[po], par[po]
            order = np.argsort(node, kind="stable")
            keys = node[order]
            uniq, starts = np.unique(keys, return_index=True)
            ends = np.r_[starts[1:], n]
            new = np.empty(n, np.int64)
            for j, p in enumerate(uniq):  # loop over parents, vectorised inside
                rows = order[starts[j]:ends[j]]
                kids = cand[np.searchsorted(par, p, "left"):np.searchsorted(par, p, "right")]
                C = self.node_centroids_[kids]
                d2 = (C * C).sum(1)[None, :] - 2.0 * X[rows] @ C.T
                new[rows] = kids[d2.argmin(1)]
            node = new
            out[:, l] = self.node_token_[node]
        return out

    def encode(self, X: Any) -> Codes:
        """SIDs of ``X`` whatever else is in the batch: a catalogue item gets its fit-time
        SID, a new item the next free last token of its nearest-child leaf (a SID no
        catalogue item holds; see the module docstring).  ``collision_rule`` is
        ``"by_construction"``: the last token enumerates a leaf's items."""
        return self._encode(X, record=False)

    def encode_new(self, X: Any) -> Codes:
        """As :meth:`encode`, and the new items join the catalogue (later calls return
        the same SIDs for them)."""
        return self._encode(X, record=True)

    def _encode(self, X: Any, record: bool) -> Codes:
        X = self._check_X(X)
        g = tuple(int(k) for k in self.codebook_sizes_[:-1])
        route = Codes(self._route(X), g)
        cat = CatalogueIndex.from_owner(self)
        out, n_new = catalogue_codes(cat, route, X, disambiguate=True,
                                     min_extra_size=int(self.codebook_sizes_[-1]), record=record)
        if record:
            cat.to_owner(self)
        return self._make_codes(out.codes, n_new, last_size=int(out.codebook_sizes[-1]))

    def fit_encode(self, X: Any, y: Any = None) -> Codes:
        """Fit and return the catalogue SIDs (``codes_``; what ``encode(X)`` gives)."""
        self.fit(X, y)
        return self._make_codes(self.codes_.copy(), 0)

    def _make_codes(self, codes: np.ndarray, n_unseen: int, last_size: int | None = None) -> Codes:
        sizes = [int(k) for k in self.codebook_sizes_]
        if last_size is not None:
            sizes[-1] = max(sizes[-1], int(last_size))
        params = {**self.get_params(), "branching": [int(v) for v in self.branching_],
                  "codebook_sizes": sizes, "n_unseen": n_unseen, "unseen_rule": UNSEEN_RULE}
        return Codes(codes, tuple(sizes), method=self.name, params=params,
                     collision_rule="by_construction")

    def decode(self, codes: Codes | np.ndarray) -> np.ndarray:
        """Centroid of the deepest node the clustering tokens reach (the leaf centroid
        for a full path; the catalogue mean when even the first token is unknown).

        The last token (the item's number within its leaf) carries no geometry: any
        non-negative value is accepted, so new items' SIDs decode too.
        """
        self._check_fitted()
        L = len(self.codebook_sizes_)
        arr = codes_array(codes, L)
        for l, k in enumerate(self.codebook_sizes_[:-1]):
            bad = (arr[:, l] >= k) | (arr[:, l] < PAD)
            if bad.any():
                raise DataError(f"token {int(arr[bad, l][0])} at level {l} is outside 0..{int(k) - 1}",
                                "pass codes made by this tokenizer")
        if (arr[:, L - 1] < PAD).any():
            raise DataError(f"last-level token {int(arr[:, L - 1].min())} is negative",
                            "pass codes made by this tokenizer")
        n = arr.shape[0]
        node = np.full(n, -1, np.int64)
        deepest = np.full(n, -1, np.int64)
        for l in range(L - 1):
            node = self._child(node, arr[:, l])
            deepest = np.where(node >= 0, node, deepest)
            if (node < 0).all():
                break
        return np.where(deepest[:, None] >= 0, self.node_centroids_[np.maximum(deepest, 0)],
                        self.root_[None, :]).astype(np.float32)

    # ------------------------------------------------------------- save/load
    def _extra_state(self) -> dict[str, Any]:
        return {"n_features_in": int(self.n_features_in_), "alignment": self.alignment_}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        self.n_features_in_ = int(state.get("n_features_in", self.node_centroids_.shape[1]))
        self.alignment_ = list(state.get("alignment", []))
        self._cache = None
        self._catalogue_cache = None
