"""k-means Semantic-ID tokenizers: VQ, RQ-KMeans and hierarchical k-means.

* :class:`VQ` (``"vq"``): one flat k-means codebook.
* :class:`RQKMeans` (``"rqkmeans"``): residual quantisation with k-means codebooks;
  level ``l`` is k-means on the residuals ``r_{l-1} = x - sum_{j<l} e_{c_j}``.
* :class:`HierarchicalKMeans` (``"hkm"``): level ``l`` clusters the items of every
  level-``l-1`` cluster separately; decode returns the leaf centroid.

All share :mod:`sidkit.tokenizers.kmeans` (chunked GEMM assignment, bisecting init
for VQ / RQ-KMeans and k-means++ for HKM, faiss-style sampling, empty-cluster repair
by splitting the largest cluster, balanced mode), never materialise an
``N x d`` residual matrix for large ``N`` (residual rows are computed chunk by chunk
from ``X`` and the codes), and resolve collisions with an extra level
(:mod:`sidkit.tokenizers.collisions`) unless ``resolve_collisions=False``.

Codebook sizes default from the catalogue size (:func:`sizing.default_codebook_sizes`)
and the sizes actually used are reported in ``Codes.params["codebook_sizes"]`` and
``fit_stats_``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from ..types import PAD, Codes
from ..utils import resolve_device, rng as make_rng
from .base import Bool, Device, Int, Ints, Real, Tokenizer, check_scale, perplexity, register
from .collisions import CATALOGUE_ATTRS, CatalogueIndex, CollisionIndex, catalogue_codes, collision_stats
from .kmeans import encode_residual_t, kmeans_t, as_matrix, check_finite_rows, check_min_items
from .sizing import default_codebook_sizes

__all__ = ["VQ", "RQKMeans", "HierarchicalKMeans", "perplexity"]


class _ResidualView:
    """Rows of ``X - sum_{l < levels} C_l[codes[:, l]]`` computed on demand.

    Quacks like a 2-D tensor for the k-means core (``shape``, ``device``, ``[rows]``,
    ``to``), so residuals of a 1M-row catalogue are never stored all at once.
    """

    def __init__(self, X, codebooks: list, codes):
        self.X, self.codebooks, self.codes = X, codebooks, codes
        self.shape = X.shape
        self.device = X.device
        self.dtype = X.dtype

    def __getitem__(self, idx):
        x = self.X[idx]
        if not self.codebooks:
            return x
        dev = self.codebooks[0].device
        if x.device != dev:
            x = x.to(dev)
        advanced = hasattr(idx, "to")  # index tensor: x is already a private copy
        ci = idx.to(self.codes.device) if advanced else idx
        r = x if (advanced and x.data_ptr() != self.X.data_ptr()) else None
        for l, C in enumerate(self.codebooks):
            g = C[self.codes[ci, l].to(dev)]
            # a slice of X is a view: the first level allocates, X is never modified
            r = x - g if r is None else r.sub_(g)
        return r

    def to(self, device, chunk: int = 16384):
        """Materialise all residual rows, chunk by chunk into one preallocated tensor
        (no full-size gather temporary)."""
        import torch

        if not self.codebooks:
            return self.X.to(device)
        n, d = self.shape
        out = torch.empty((n, d), dtype=torch.float32, device=device)
        for s in range(0, n, chunk):
            out[s:s + chunk] = self[slice(s, s + chunk)]
        return out


def _total_variance(Xt, chunk: int = 16384) -> float:
    """Mean squared distance of the rows to their mean (chunked, float64 sums)."""
    import torch

    n, d = Xt.shape
    mean = torch.zeros(d, dtype=torch.float64, device=Xt.device)
    for s in range(0, n, chunk):
        mean += Xt[s:s + chunk].sum(0, dtype=torch.float64)
    mean = (mean / n).to(torch.float32)
    acc = 0.0
    for s in range(0, n, chunk):
        acc += float(torch.linalg.vector_norm(Xt[s:s + chunk] - mean, dim=1).square().sum(
            dtype=torch.float64))
    return acc / n


def _level_stats(codes: np.ndarray, sizes: Sequence[int]) -> dict[str, list]:
    return {
        "perplexity": [perplexity(codes[:, l], k) for l, k in enumerate(sizes)],
        "used_codes": [int(np.unique(codes[:, l][codes[:, l] >= 0]).size) for l in range(len(sizes))],
    }


class _KMeansTokenizer(Tokenizer):
    """Shared plumbing: sizes, validation, collision level, save/load state."""

    def _resolved_sizes(self, n: int) -> tuple[int, ...]:
        return _sizes_from(self.codebook_sizes, self.n_levels, n)

    # subclasses: _fit_base(Xt, sizes, gen, dev) -> (codes (N, L) np, stats dict)
    #             _encode_base(Xt, dev) -> codes (N, L) np
    #             _decode_base(codes (N, L) np) -> (N, d) np

    def _device(self):
        return resolve_device(self.device)

    def fit(self, X: Any, y: Any = None) -> "_KMeansTokenizer":
        self._fit(X)
        return self

    def _fit(self, X: Any) -> Codes:
        """Fit and return the training codes."""
        import torch

        self._check_params()
        t0 = time.perf_counter()
        dev = self._device()
        Xt = as_matrix(X)
        check_scale(Xt)
        sizes = self._resolved_sizes(Xt.shape[0])
        check_min_items(Xt.shape[0], max(sizes))
        gen = make_rng(self.random_state)
        with torch.no_grad():
            base, stats = self._fit_base(Xt, sizes, gen, dev)
        self.codebook_sizes_ = np.asarray(sizes, dtype=np.int64)
        base_codes = self._make_codes(base)
        out = self._finish(base_codes, CollisionIndex().fit(base_codes))
        self._fit_catalogue(Xt, out)
        stats.update(_level_stats(base, sizes))
        stats["codebook_sizes"] = list(sizes)
        stats["collisions"] = collision_stats(base_codes)
        stats["fit_seconds"] = time.perf_counter() - t0
        self.fit_stats_ = stats
        return out

    # --- catalogue SIDs (batch-independent encode; see collisions.CatalogueIndex)
    #: fit codes are the nearest-codeword codes ``encode`` computes (no extra pass)
    _fit_codes_are_routes = False

    def _fit_catalogue(self, Xt, codes: Codes) -> None:
        """Store the item -> SID table of the fitted catalogue, keyed by each item's
        encode route (nearest codewords: may differ from balanced fit codes)."""
        import torch

        L = len(self.codebook_sizes_)
        if self._fit_codes_are_routes and not getattr(self, "balanced", False):
            route = codes.codes[:, :L]
        else:
            with torch.no_grad():
                route = self._encode_base(Xt, self._device())
        CatalogueIndex().fit(Xt, route, codes.codes, random_state=self.random_state).to_owner(self)

    def fit_encode(self, X: Any, y: Any = None) -> Codes:
        """Fit and return the catalogue SIDs without a second pass (for
        ``balanced=True`` the size-constrained assignment; ``encode`` returns the same
        SIDs for these items and the nearest codewords for new ones)."""
        return self._fit(X)

    # ------------------------------------------------------------- codes
    def _codes_params(self) -> dict[str, Any]:
        params = self.get_params()
        sizes = [int(k) for k in self.codebook_sizes_]
        if "codebook_sizes" in params:
            params["codebook_sizes"] = sizes
        if "codebook_size" in params:
            params["codebook_size"] = sizes[0]
        params["n_levels"] = len(sizes)
        return params

    def _make_codes(self, base: np.ndarray) -> Codes:
        return Codes(base, tuple(int(k) for k in self.codebook_sizes_), method=self.name,
                     params=self._codes_params(), collision_rule="none")

    def _finish(self, base_codes: Codes, index: CollisionIndex) -> Codes:
        if not self.resolve_collisions:
            return base_codes
        return index.transform(base_codes)

    #: the encode path checks NaN/inf itself (see ``_ResidualKMeans._encode_base``)
    _encode_checks_finite = False

    def _prepare(self, X: Any):
        self._check_fitted()
        Xt = as_matrix(X, check_finite=not self._encode_checks_finite)
        check_scale(Xt)
        d = self._dim()
        if Xt.shape[1] != d:
            raise DataError(f"X has dimension {Xt.shape[1]} but the tokenizer was fitted on {d}",
                            "encode embeddings from the same embedding model")
        return Xt

    def encode(self, X: Any) -> Codes:
        """SIDs of the rows of ``X``, whatever else is in the batch.

        A catalogue item (a row within ``MATCH_RTOL`` of a fitted item on the same
        nearest-codeword route, see :class:`~sidkit.tokenizers.collisions.CatalogueIndex`)
        gets its fit-time SID (what ``fit_encode`` returned).  A new item gets its
        nearest-codeword tokens and, with ``resolve_collisions``, an extra token no
        catalogue item holds under those tokens (catalogue count + rank among this
        batch's new items).  :meth:`encode_new` also records the new items."""
        return self._encode(X, record=False)

    def encode_new(self, X: Any) -> Codes:
        """As :meth:`encode`, and the new items join the catalogue: later calls
        return the same SIDs for them and give other new items other SIDs."""
        return self._encode(X, record=True)

    def _encode(self, X: Any, record: bool) -> Codes:
        import torch

        Xt = self._prepare(X)
        with torch.no_grad():
            route = self._encode_base(Xt, self._device())
        cat = CatalogueIndex.from_owner(self)
        out, _ = catalogue_codes(cat, self._make_codes(route), Xt,
                                 disambiguate=bool(self.resolve_collisions), record=record)
        if record:
            cat.to_owner(self)
        return out

    def _base_array(self, codes: Codes | np.ndarray) -> np.ndarray:
        L = len(self.codebook_sizes_)
        if isinstance(codes, Codes):
            arr = codes.codes
        else:
            arr = np.atleast_2d(np.asarray(codes, dtype=np.int64))
        if arr.shape[1] < L:
            raise DataError(f"codes have {arr.shape[1]} levels but this tokenizer uses {L}",
                            "decode codes produced by this tokenizer")
        arr = arr[:, :L]
        ks = np.asarray(self.codebook_sizes_)[None, :]
        if ((arr >= ks) | (arr < PAD)).any():
            raise DataError("codes contain tokens outside the codebooks",
                            "decode codes produced by this tokenizer")
        return arr

    def decode(self, codes: Codes | np.ndarray) -> np.ndarray:
        """Reconstruction from the semantic levels (a collision level is ignored)."""
        self._check_fitted()
        return self._decode_base(self._base_array(codes))

    def _extra_state(self) -> dict[str, Any]:
        return {"fit_stats": getattr(self, "fit_stats_", {})}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        self.fit_stats_ = state.get("fit_stats", {})


# ============================================================== RQ-KMeans / VQ
class _ResidualKMeans(_KMeansTokenizer):
    _encode_checks_finite = True
    # unbalanced: the final k-means assignment of every level is the nearest codeword
    # with encode's arithmetic (kmeans.encode_residual_t), so fit codes are the routes
    # (tests/test_catalogue_sids.py checks it item by item)
    _fit_codes_are_routes = True
    _state_attrs = ("codebooks_", "codebook_sizes_", "level_mse_", *CATALOGUE_ATTRS)

    def _dim(self) -> int:
        return int(self.codebooks_.shape[2])

    def _fit_base(self, Xt, sizes, gen, dev):
        import torch

        n, d = Xt.shape
        L = len(sizes)
        codes = torch.empty((n, L), dtype=torch.int64, device=dev)
        Cs: list = []
        level_mse, n_iters = [], []
        for l, k in enumerate(sizes):
            view = _ResidualView(Xt, Cs, codes)
            C, labels, dist, it = kmeans_t(
                view, int(k), n_iter=self.n_iter, n_init=getattr(self, "n_init", 1),
                init="bisecting", max_points_per_centroid=self.max_points_per_centroid,
                balanced=self.balanced, balance_tolerance=getattr(self, "balance_tolerance", 0.1),
                gen=gen, dev=dev)
            codes[:, l] = labels.to(dev)
            Cs.append(C)
            level_mse.append(float(dist.mean(dtype=torch.float64)))
            n_iters.append(it)
        total = _total_variance(Xt)
        kmax = max(sizes)
        books = np.zeros((L, kmax, d), dtype=np.float32)
        for l, C in enumerate(Cs):
            books[l, : C.shape[0]] = C.cpu().numpy()
        self.codebooks_ = books
        self.level_mse_ = np.asarray(level_mse, dtype=np.float64)
        stats = {
            "level_mse": level_mse,
            "relative_mse": [m / total if total > 0 else 0.0 for m in level_mse],
            "total_variance": total,
            "n_iter": n_iters,
        }
        return codes.cpu().numpy(), stats

    def _encode_base(self, Xt, dev):
        import torch

        Cs = [torch.from_numpy(self.codebooks_[l, : int(k)]).to(dev)
              for l, k in enumerate(self.codebook_sizes_)]
        codes, finite = encode_residual_t(Xt, Cs)
        if not finite:  # some row holds NaN/inf (or overflows): the exact check
            check_finite_rows(Xt)
        return codes.cpu().numpy()

    def _decode_base(self, codes: np.ndarray) -> np.ndarray:
        out = np.zeros((codes.shape[0], self.codebooks_.shape[2]), dtype=np.float32)
        for l in range(codes.shape[1]):  # loop over levels, not items
            c = codes[:, l]
            ok = c >= 0
            out[ok] += self.codebooks_[l][c[ok]]
        return out


_KMEANS_CONSTRAINTS: dict[str, list] = {
    "n_iter": [Int(ge=1)], "n_init": [Int(ge=1)], "max_points_per_centroid": [None, Int(ge=1)],
    "balanced": [Bool()], "balance_tolerance": [Real(ge=0, lt=1)],
    "resolve_collisions": [Bool()], "random_state": [None, Int(ge=0)], "device": [Device()],
}


@register
class RQKMeans(_ResidualKMeans):
    """Residual k-means (RQ-KMeans): level ``l`` is k-means on level ``l-1``'s residuals.

    Parameters
    ----------
    codebook_sizes : int, sequence of ints (each >= 2), or None (chosen from the number
        of items by :func:`~sidkit.tokenizers.sizing.default_codebook_sizes`).
    n_levels : number of semantic levels; None = ``len(codebook_sizes)`` for a sequence,
        else 3.  Given with a sequence of another length it is an error.
    n_iter, n_init, max_points_per_centroid : k-means settings per level (faiss-style
        sampling of at most ``max_points_per_centroid * K`` points; None = all).  Each
        level starts from the bisecting init (centroids are means of groups of points;
        greedy k-means++ seeded the later levels' near-isotropic residuals on outliers,
        and one code took 1,550 of MovieLens-100K's 1,682 items at 3 x 64).
    balanced, balance_tolerance : size-constrained k-means per level.
    resolve_collisions : append a disambiguation level (TIGER).
    random_state, device : seed; ``"auto"`` uses CUDA when present.

    Fitted: ``codebooks_`` (L, K_max, d), ``codebook_sizes_``, ``level_mse_`` (mean
    squared residual after each level), ``fit_stats_`` (relative MSE, perplexity,
    used codes, collisions per level).
    """

    name = "rqkmeans"
    _parameter_constraints = {"codebook_sizes": [None, Int(ge=2), Ints(ge=2)],
                              "n_levels": [None, Int(ge=1)], **_KMEANS_CONSTRAINTS}

    def __init__(self, codebook_sizes: int | Sequence[int] | None = None,
                 n_levels: int | None = None,
                 n_iter: int = 20, n_init: int = 1, max_points_per_centroid: int | None = 256,
                 balanced: bool = False, balance_tolerance: float = 0.1,
                 resolve_collisions: bool = True, random_state: int | None = 0,
                 device: str = "auto"):
        self._store_params(locals())


@register
class VQ(_ResidualKMeans):
    """One flat k-means codebook (a 1-level RQ-KMeans).

    ``codebook_size=None`` picks ``N / 4`` codewords (at most 256) by the sizing rule
    (:mod:`sidkit.tokenizers.sizing`).
    """

    name = "vq"
    _parameter_constraints = {"codebook_size": [None, Int(ge=2)], **_KMEANS_CONSTRAINTS}

    def __init__(self, codebook_size: int | None = None, n_iter: int = 20, n_init: int = 1,
                 max_points_per_centroid: int | None = 256, balanced: bool = False,
                 balance_tolerance: float = 0.1, resolve_collisions: bool = True,
                 random_state: int | None = 0, device: str = "auto"):
        self._store_params(locals())

    def _resolved_sizes(self, n: int) -> tuple[int, ...]:
        return _sizes_from(self.codebook_size, 1, n)


def _sizes_from(spec: Any, n_levels: int | None, n: int) -> tuple[int, ...]:
    n_levels = 3 if n_levels is None else n_levels
    if spec is None:
        return default_codebook_sizes(n, n_levels)
    if isinstance(spec, (int, np.integer)):
        sizes = (int(spec),) * int(n_levels)
    else:
        try:
            sizes = tuple(int(k) for k in spec)
        except TypeError:
            raise DataError(f"codebook sizes must be an int, a list of ints or None, got {spec!r}",
                            "e.g. codebook_sizes=[256, 256, 256]") from None
    if not sizes or min(sizes) < 1:
        raise DataError(f"codebook sizes must be positive, got {list(sizes)}",
                        "use sizes >= 1 (or None to choose them from the catalogue size)")
    return sizes


# ============================================================== hierarchical
@register
class HierarchicalKMeans(_KMeansTokenizer):
    """Hierarchical k-means (HKM): each cluster is split again by its own k-means.

    Level 1 clusters all items into ``K_1``; level ``l`` runs k-means on the items of
    each level-``l-1`` cluster separately (a parent with fewer than ``K_l`` items gets
    one child per item).  Token ``t`` at level ``l`` means "child ``t`` of this
    parent".  Decode returns the centroid of the deepest node on the code path.

    Fitted: ``centroids_`` (M, d) all node centroids, ``child_table_`` (M + 1, K_max)
    node id of child ``t`` of node ``m`` in row ``m + 1`` (row 0 = root; -1 = none),
    ``codebook_sizes_``, ``level_mse_``.
    """

    name = "hkm"
    prefix_conditional = True
    _state_attrs = ("centroids_", "child_table_", "codebook_sizes_", "level_mse_",
                    *CATALOGUE_ATTRS)

    _parameter_constraints = {"codebook_sizes": [None, Int(ge=2), Ints(ge=2)],
                              "n_levels": [None, Int(ge=1)],
                              **{k: v for k, v in _KMEANS_CONSTRAINTS.items() if k != "n_init"}}

    def __init__(self, codebook_sizes: int | Sequence[int] | None = None,
                 n_levels: int | None = None,
                 n_iter: int = 20, max_points_per_centroid: int | None = 256,
                 balanced: bool = False, balance_tolerance: float = 0.1,
                 resolve_collisions: bool = True, random_state: int | None = 0,
                 device: str = "auto"):
        self._store_params(locals())

    def _dim(self) -> int:
        return int(self.centroids_.shape[1])

    def _fit_base(self, Xt, sizes, gen, dev):
        import torch

        n, d = Xt.shape
        L = len(sizes)
        kmax = max(sizes)
        codes = np.zeros((n, L), dtype=np.int64)
        cents: list[np.ndarray] = []
        # row per node (+ root): one array grown once per level, not one small array per
        # node (512k of them at 80 x 80 x 80)
        table = np.full((1, kmax), -1, dtype=np.int64)
        node = np.full(n, -1, dtype=np.int64)  # current node of every item (-1 = root)
        level_mse = []
        n_nodes = 0
        for l, k in enumerate(sizes):
            new_node = np.empty(n, dtype=np.int64)
            sq = np.empty(n, dtype=np.float64)
            order = np.argsort(node, kind="stable")
            bounds = np.flatnonzero(np.diff(node[order])) + 1
            groups = np.split(order, bounds)
            level_cents = []
            for members in groups:  # loop over parent clusters, not items
                parent = int(node[members[0]])
                kk = min(int(k), members.size)
                # index_select: ~20x cheaper than Xt[idx] per call on small groups
                Xp = torch.index_select(Xt, 0, torch.from_numpy(members)).to(dev)
                if kk == 1:
                    C = Xp.mean(0, keepdim=True)
                    lab = torch.zeros(members.size, dtype=torch.int64, device=dev)
                    dist = torch.linalg.vector_norm(Xp - C, dim=1).square()
                elif kk == members.size:
                    C, lab = Xp.clone(), torch.arange(kk, device=dev)
                    dist = torch.zeros(kk, device=dev)
                else:
                    C, lab, dist, _ = kmeans_t(
                        Xp, kk, n_iter=self.n_iter, n_init=1, init="k-means++",
                        max_points_per_centroid=self.max_points_per_centroid,
                        balanced=self.balanced, balance_tolerance=self.balance_tolerance,
                        gen=gen, dev=dev)
                ids = n_nodes + np.arange(kk)
                n_nodes += kk
                level_cents.append(C.cpu().numpy())
                table[parent + 1, :kk] = ids
                lab_np = lab.cpu().numpy()
                codes[members, l] = lab_np
                new_node[members] = ids[lab_np]
                sq[members] = dist.cpu().numpy()
            cents.extend(level_cents)
            level_nodes = sum(len(c) for c in level_cents)
            table = np.concatenate([table, np.full((level_nodes, kmax), -1, dtype=np.int64)])
            node = new_node
            level_mse.append(float(sq.mean()))
        self.centroids_ = np.concatenate(cents).astype(np.float32)
        self.child_table_ = table
        self.level_mse_ = np.asarray(level_mse)
        total = _total_variance(Xt)
        stats = {"level_mse": level_mse,
                 "relative_mse": [m / total if total > 0 else 0.0 for m in level_mse],
                 "total_variance": total, "n_nodes": int(n_nodes)}
        return codes, stats

    def _encode_base(self, Xt, dev):
        """Descend the tree level by level for all rows at once.

        At each level the rows are sorted by their current node and cut into tiles of
        at most ``T`` rows sharing one parent; a batch of tiles is one ``bmm`` of the
        tiles' rows against their parent's (padded) children, giving GEMM distances
        ``||c||^2 - 2 x.c``.  The result must equal the exact nearest child by the
        direct ``sum((c - x)^2)`` (the historical definition, see
        :func:`_hkm_nearest_child_direct`): rows whose two best GEMM distances are
        closer than a rounding-error bound (or that have no finite candidate) are
        recomputed with that direct formula.
        """
        import torch

        L = len(self.codebook_sizes_)
        cents = torch.from_numpy(self.centroids_).to(dev)
        table = torch.from_numpy(self.child_table_).to(dev)
        cnorm = torch.linalg.vector_norm(cents, dim=1).square_()
        n, d = Xt.shape
        kmax = table.shape[1]
        out = torch.empty((n, L), dtype=torch.int64, device=dev)
        xnorm = _sqnorms_dev(Xt, dev)
        # rounding bound: |error| of either distance formula <= ~d u (||x||^2 + ||c||^2)
        tol = (16.0 * d * 2.0 ** -24) * (xnorm + float(cnorm.max()) if cnorm.numel() else xnorm)
        row = torch.zeros(n, dtype=torch.int64, device=dev)  # child-table row (0 = root)
        for l in range(L):
            tok = _hkm_nearest_child(Xt, row, cents, cnorm, table, tol, dev)
            out[:, l] = tok
            row = table[row, tok] + 1
        return out.cpu().numpy()

    def _decode_base(self, codes: np.ndarray) -> np.ndarray:
        n = codes.shape[0]
        row = np.zeros(n, dtype=np.int64)  # child-table row of the current node (0 = root)
        last = np.full(n, -1, dtype=np.int64)  # deepest valid node on the path
        alive = np.ones(n, dtype=bool)
        for l in range(codes.shape[1]):  # loop over levels, not items
            c = codes[:, l]
            ok = alive & (c >= 0)
            nxt = np.full(n, -1, dtype=np.int64)
            nxt[ok] = self.child_table_[row[ok], c[ok]]
            good = nxt >= 0
            last = np.where(good, nxt, last)
            row = np.where(good, nxt + 1, row)
            alive = good
        out = np.zeros((n, self.centroids_.shape[1]), dtype=np.float32)
        has = last >= 0
        out[has] = self.centroids_[last[has]]
        return out


#: elements of the per-batch gathered rows + children of :func:`_hkm_nearest_child`
_HKM_BATCH_ELEMS = 1 << 22


def _sqnorms_dev(Xt, dev, chunk: int = 65536):
    import torch

    n = Xt.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=dev)
    for s in range(0, n, chunk):
        out[s:s + chunk] = torch.linalg.vector_norm(Xt[s:s + chunk].to(dev), dim=1).square_()
    return out


def _hkm_nearest_child_direct(x, kids, cents):
    """Exact nearest child, ``argmin_t sum((C[kids[:, t]] - x)^2)`` (the first on ties;
    ``-1`` kids are masked; a row without children gets token 0).  Rows are processed
    in chunks so that the ``(c, K_max, d)`` temporary stays at 16 MiB."""
    import torch

    m, d = x.shape
    kmax = kids.shape[1]
    tok = torch.empty(m, dtype=torch.int64, device=x.device)
    chunk = max(1, (1 << 22) // max(kmax * d, 1))
    for s in range(0, m, chunk):
        k = kids[s:s + chunk]
        C = cents[k.clamp(min=0)]  # (c, kmax, d)
        dist = (C - x[s:s + chunk, None, :]).square_().sum(-1)
        dist[k < 0] = float("inf")
        tok[s:s + chunk] = dist.argmin(1)
    return tok


def _hkm_nearest_child(Xt, row, cents, cnorm, table, tol, dev):
    """Token (child index) of the nearest child of node-row ``row[i]`` for every row
    of ``Xt``; equal to :func:`_hkm_nearest_child_direct` (see
    ``HierarchicalKMeans._encode_base``)."""
    import torch

    n, d = Xt.shape
    kmax = table.shape[1]
    inf = float("inf")
    # group rows by parent, cut each group into tiles of at most T rows
    order = torch.sort(row, stable=True).indices
    srow = row[order]
    uniq, counts = torch.unique_consecutive(srow, return_counts=True)
    mean = n / max(uniq.numel(), 1)
    T = int(min(256, max(4, 1 << max(0, math.ceil(math.log2(max(mean, 1.0)))))))
    tiles_per = (counts + T - 1) // T
    n_tiles = int(tiles_per.sum())
    g_start = torch.cumsum(counts, 0) - counts  # first sorted position of each group
    t_start = torch.cumsum(tiles_per, 0) - tiles_per  # first tile of each group
    grp = torch.repeat_interleave(torch.arange(uniq.numel(), device=dev), counts)
    rank = torch.arange(n, device=dev) - g_start[grp]
    tile = t_start[grp] + rank // T
    slot = rank % T
    slots = torch.full((n_tiles, T), -1, dtype=torch.int64, device=dev)
    slots[tile, slot] = order  # row index in every slot (-1 = padding)
    tile_parent = torch.repeat_interleave(uniq, tiles_per)  # child-table row per tile

    best = torch.empty(n, dtype=torch.int64, device=dev)
    unsure = torch.zeros(n, dtype=torch.bool, device=dev)
    B = max(1, _HKM_BATCH_ELEMS // ((kmax + T) * d))
    for s in range(0, n_tiles, B):
        e = min(n_tiles, s + B)
        sl = slots[s:e]  # (b, T)
        valid = sl >= 0
        rows = sl.clamp(min=0)
        xb = torch.index_select(Xt, 0, rows.flatten().to(Xt.device)).to(dev).view(e - s, T, d)
        kids = table[tile_parent[s:e]]  # (b, kmax)
        kc = kids.clamp(min=0)
        Cb = torch.index_select(cents, 0, kc.flatten()).view(e - s, kmax, d)
        bias = cnorm[kc].masked_fill_(kids < 0, inf)[:, None, :]  # (b, 1, kmax)
        # ||c||^2 - 2 x.c  (b, T, kmax)
        D = torch.baddbmm(bias, xb, Cb.transpose(1, 2), beta=1.0, alpha=-2.0)
        v0, i0 = torch.min(D, dim=2, keepdim=True)
        tk = i0.squeeze(2)
        if kmax >= 2:
            v1 = torch.min(D.scatter_(2, i0, inf), dim=2, keepdim=True).values
            ok = (v1 - v0).squeeze(2) > tol[rows]  # False for NaN (no finite child)
        else:
            ok = torch.ones((e - s, T), dtype=torch.bool, device=dev)
        r = sl[valid]
        best[r] = tk[valid]
        unsure[r] = ~ok[valid]
    idx = torch.nonzero(unsure).flatten()
    if idx.numel():
        x = Xt[idx.to(Xt.device)].to(dev)
        best[idx] = _hkm_nearest_child_direct(x, table[row[idx]], cents)
    return best
