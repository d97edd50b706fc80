"""Semantic-ID collisions: report them, resolve them with an extra level (TIGER).

Two items *collide* when their whole SIDs (tokens and length) are equal.
:func:`resolve_collisions` appends one disambiguation token that numbers the items
inside each group of identical SIDs (0, 1, 2, ... in item order), so every item gets
a distinct SID and ``Codes.lookup`` maps each SID back to exactly one item.
:class:`CollisionIndex` remembers how many items each base SID already holds so that
new (cold-start) items get the next free number under their SID without changing
the codes of existing items.  :class:`CatalogueIndex` is the fitted catalogue's
item -> SID table that makes every tokenizer's ``encode`` batch-independent
(:func:`catalogue_codes`; see ``docs/encoding.md``).

Variable-length SIDs (hourglass top-K removal): the token is appended right after
each item's last token, so position ``j`` of the result holds a disambiguation
token for items of length ``j`` and a semantic token for longer ones; the codebook
size of every position covers both.  Length stays part of the identity (``PAD``),
so a shortened SID never equals a full-length one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DataError
from ..types import PAD, Codes

__all__ = ["collision_stats", "resolve_collisions", "group_ranks", "CollisionIndex",
           "CatalogueIndex", "catalogue_codes", "row_hashes", "MATCH_RTOL"]


def group_ranks(keys: np.ndarray) -> np.ndarray:
    """Rank of every element among equal ``keys``, in order of appearance (vectorised)."""
    keys = np.asarray(keys)
    n = keys.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    start = np.ones(n, dtype=bool)
    start[1:] = sk[1:] != sk[:-1]
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = run_ranks(start)
    return ranks


def run_ranks(start: np.ndarray) -> np.ndarray:
    """Position of every element within its run, given a flag per element that is True
    where a run starts (``start[0]`` must be True): ``[T, F, F, T, F] -> [0, 1, 2, 0, 1]``."""
    pos = np.arange(len(start), dtype=np.int64)
    return pos - np.maximum.accumulate(np.where(start, pos, 0))


def _row_keys(rows: np.ndarray) -> np.ndarray:
    """One int64 per row (equal iff rows are equal; PAD included), mixed radix."""
    sub = rows + 1  # PAD -> 0
    radices = sub.max(axis=0).astype(np.float64) + 1
    if np.prod(radices) >= 2**62:
        _, inv = np.unique(sub, axis=0, return_inverse=True)
        return inv.reshape(-1).astype(np.int64)
    key = np.zeros(rows.shape[0], dtype=np.int64)
    for l in range(rows.shape[1]):  # loop over levels, not items
        key = key * int(radices[l]) + sub[:, l]
    return key


def _match_rows(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Index into the distinct rows ``table`` of every row of ``rows``, -1 when absent."""
    if rows.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if table.shape[0] == 0:
        return np.full(rows.shape[0], -1, dtype=np.int64)
    both = np.concatenate([table, rows], axis=0)
    _, inv = np.unique(_row_keys(both), return_inverse=True)
    inv = inv.reshape(-1)
    g = table.shape[0]
    lut = np.full(inv.max() + 1, -1, dtype=np.int64)
    lut[inv[:g]] = np.arange(g)
    return lut[inv[g:]]


def _as_codes(codes: Any) -> Codes:
    if isinstance(codes, Codes):
        return codes
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise DataError(f"codes must be a Codes object or an (N, L) array, got shape {arr.shape}",
                        "pass tokenizer.encode(X)")
    sizes = tuple(int(k) for k in (arr.max(axis=0) + 1).clip(1)) if arr.size else (1,) * arr.shape[1]
    return Codes(arr, sizes)


def collision_stats(codes: Codes | np.ndarray) -> dict[str, Any]:
    """Collision report of whole SIDs.

    Returns ``n_items``, ``n_unique`` SIDs, ``collision_rate`` = (N - unique) / N,
    ``items_in_collision`` (share of items whose SID is shared), ``n_colliding_sids``
    and ``largest_group`` (most items sharing one SID; 1 = collision-free).
    """
    c = _as_codes(codes)
    n = c.n_items
    if n == 0:
        return {"n_items": 0, "n_unique": 0, "collision_rate": 0.0, "items_in_collision": 0.0,
                "n_colliding_sids": 0, "largest_group": 0}
    _, counts = np.unique(c.sid_keys(), return_counts=True)
    shared = counts > 1
    return {
        "n_items": n,
        "n_unique": int(counts.size),
        "collision_rate": float((n - counts.size) / n),
        "items_in_collision": float(counts[shared].sum() / n),
        "n_colliding_sids": int(shared.sum()),
        "largest_group": int(counts.max()),
    }


def _append_token(c: Codes, token: np.ndarray, extra_size: int, *, rule: str = "extra_level") -> Codes:
    """Append ``token`` right after each item's last token (a new column at the end
    for fixed-length codes)."""
    n, L = c.codes.shape
    new = np.full((n, L + 1), PAD, dtype=np.int64)
    new[:, :L] = c.codes
    new[np.arange(n), c.lengths] = token
    sizes = list(c.codebook_sizes) + [int(extra_size)]
    if c.is_variable_length:
        # positions that hold a disambiguation token for shorter items
        for j in np.unique(c.lengths):  # loop over distinct lengths (<= L), not items
            if j < L:
                sizes[j] = max(sizes[j], int(extra_size))
    params = dict(c.params)
    params.setdefault("base_levels", L)
    return Codes(new, tuple(sizes), lengths=c.lengths + 1, method=c.method, params=params,
                 collision_rule=rule, item_ids=c.item_ids)


def resolve_collisions(codes: Codes | np.ndarray, *, min_extra_size: int = 1) -> Codes:
    """Append a level numbering the items within each group of identical SIDs.

    The result has ``collision_rule="extra_level"``, one more level whose codebook
    size is the largest group (at least ``min_extra_size``), and zero collisions.
    Items with a unique SID get token 0.
    """
    c = _as_codes(codes)
    ranks = group_ranks(c.sid_keys())
    extra = max(int(ranks.max()) + 1 if ranks.size else 1, int(min_extra_size))
    return _append_token(c, ranks, extra)


class CollisionIndex:
    """Per-SID item counts of a fitted catalogue, for collision-free cold start.

    ``fit(base_codes)`` records how many items share every base SID.  ``transform``
    numbers items within a batch (identical to :func:`resolve_collisions`, so the
    fitted catalogue re-encodes to the same codes); ``add`` gives new items the next
    free number under their base SID (fitted count + rank in the batch) and records
    them, so existing items' codes never change and new items never collide with
    them.  State: ``rows_`` (G, L) distinct base SIDs (PAD-padded), ``counts_`` (G,).
    """

    def __init__(self) -> None:
        pass

    # ------------------------------------------------------------------ fit
    def fit(self, codes: Codes) -> "CollisionIndex":
        c = _as_codes(codes)
        _, first, counts = np.unique(c.sid_keys(), return_index=True, return_counts=True)
        self.rows_ = c.codes[first].astype(np.int64)
        self.counts_ = counts.astype(np.int64)
        return self

    @classmethod
    def from_state(cls, rows: np.ndarray, counts: np.ndarray) -> "CollisionIndex":
        obj = cls()
        obj.rows_ = np.asarray(rows, dtype=np.int64)
        obj.counts_ = np.asarray(counts, dtype=np.int64)
        return obj

    @property
    def largest_group(self) -> int:
        return int(self.counts_.max()) if self.counts_.size else 1

    def _check(self, c: Codes) -> None:
        if not hasattr(self, "rows_"):
            from ..errors import NotFittedError

            raise NotFittedError("this CollisionIndex is not fitted", "call fit(base_codes) first")
        if c.n_levels != self.rows_.shape[1]:
            raise DataError(f"codes have {c.n_levels} levels but the index was fitted on "
                            f"{self.rows_.shape[1]}", "pass base codes without the extra level")

    def _match(self, codes: np.ndarray) -> np.ndarray:
        """Index into ``rows_`` of every row of ``codes``, -1 when unseen."""
        return _match_rows(self.rows_, codes)

    # ------------------------------------------------------------ transform
    def transform(self, codes: Codes) -> Codes:
        """Within-batch numbering; extra codebook size >= the fitted largest group."""
        c = _as_codes(codes)
        self._check(c)
        return resolve_collisions(c, min_extra_size=self.largest_group)

    def add(self, codes: Codes) -> Codes:
        """Number new items after the items already under their SID; record them."""
        c = _as_codes(codes)
        self._check(c)
        ranks = group_ranks(c.sid_keys())
        gid = self._match(c.codes)
        base = np.where(gid >= 0, self.counts_[np.maximum(gid, 0)], 0)
        token = base + ranks
        # record: bump seen groups, append unseen ones
        seen = gid >= 0
        np.add.at(self.counts_, gid[seen], 1)
        if (~seen).any():
            rows, counts = np.unique(c.codes[~seen], axis=0, return_counts=True)
            self.rows_ = np.concatenate([self.rows_, rows])
            self.counts_ = np.concatenate([self.counts_, counts])
            order = np.lexsort(self.rows_.T[::-1])
            self.rows_, self.counts_ = self.rows_[order], self.counts_[order]
        extra = max(self.largest_group, int(token.max()) + 1 if token.size else 1)
        return _append_token(c, token, extra)


# ------------------------------------------------------------ catalogue index
#: a row is a catalogue item when its fingerprint lies within this fraction of the
#: catalogue's spread (RMS norm of the centred fingerprints) of that item's fingerprint
MATCH_RTOL = 1e-3
#: fingerprint dimensions (random orthonormal projections of the centred row)
FINGERPRINT_DIM = 8
#: attributes a tokenizer stores for its :class:`CatalogueIndex` (see ``to_owner``)
CATALOGUE_ATTRS = ("catalogue_sids_", "catalogue_route_", "catalogue_prints_",
                   "catalogue_center_", "catalogue_projection_", "catalogue_tol_")


def row_hashes(X: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """A 64-bit hash of every row's bytes (exact-duplicate detection)."""
    from ..utils import rng

    u = np.ascontiguousarray(X, dtype=np.float32).view(np.uint32)
    mult = rng(0x5EED).integers(1, 2**63 - 1, size=u.shape[1], dtype=np.uint64) | np.uint64(1)
    out = np.empty(u.shape[0], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for s in range(0, u.shape[0], chunk):
            blk = u[s:s + chunk].astype(np.uint64)
            blk ^= blk >> np.uint64(7)
            out[s:s + chunk] = (blk * mult[None, :]).sum(1, dtype=np.uint64)
    return out


def _as_numpy(X: Any) -> np.ndarray:
    if hasattr(X, "detach"):  # a torch tensor
        X = X.detach().cpu().numpy()
    return np.ascontiguousarray(X, dtype=np.float32)


class CatalogueIndex:
    """The fitted catalogue's item -> SID table, so ``encode`` is batch-independent.

    How a row is recognised as catalogue item ``i`` (``match``): its *route* (the
    semantic prefix ``encode`` computes for it, e.g. nearest codeword per level) equals
    item ``i``'s route, and its *fingerprint* -- ``FINGERPRINT_DIM`` random orthonormal
    projections of the row minus the catalogue mean -- lies within ``tol_`` =
    ``MATCH_RTOL`` x (RMS norm of the catalogue's fingerprints) of item ``i``'s,
    nearest first (about 0.3% of the per-coordinate RMS for isotropic data).  So float noise (``X + 1e-6``, a re-embedding on another device)
    keeps an item's SID; a row farther than that from every catalogue item on its route
    is a new item.  Rows matching a group of identical catalogue rows (exact
    duplicates) take their SIDs in turn, cycling.

    State (item order, ``N`` = catalogue size, ``p = min(d, FINGERPRINT_DIM)``):
    ``sids_`` (N, L') catalogue SIDs, ``route_`` (N, L) routes, ``prints_`` (N, p)
    float32, ``center_`` (d,), ``projection_`` (d, p), ``tol_`` (1,).  No ``N x d``
    array is kept.  The route is stored apart from the SID because balanced
    assignments (GAOQ, ``balanced=True``) can give a catalogue item a SID prefix other
    than its nearest-codeword route.
    """

    def __init__(self) -> None:
        pass

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, route: np.ndarray, sids: np.ndarray, *,
            random_state: int | None = 0) -> "CatalogueIndex":
        """Index catalogue rows ``X`` (N, d) with their ``route`` (N, L) and ``sids``."""
        from ..utils import rng

        Xn = _as_numpy(X)
        n, d = Xn.shape
        p = min(d, FINGERPRINT_DIM)
        center = Xn.mean(0, dtype=np.float64).astype(np.float32)
        g = rng(0 if random_state is None else random_state).standard_normal((d, p))
        q, r = np.linalg.qr(g)
        self.projection_ = (q * np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))).astype(np.float32)
        self.center_ = center
        prints = self.fingerprint(Xn)
        spread = float(np.sqrt(np.mean((prints.astype(np.float64) ** 2).sum(1))))
        self.tol_ = np.asarray([MATCH_RTOL * spread], np.float64)
        # exact duplicate rows get bit-identical fingerprints (one group of SIDs)
        h = row_hashes(Xn)
        o = np.argsort(h, kind="stable")
        hs = h[o]
        start = np.r_[True, hs[1:] != hs[:-1]]
        first = o[np.maximum.accumulate(np.where(start, np.arange(n), 0))]
        dup = np.flatnonzero(first != o)
        if dup.size:
            rows, src = o[dup], first[dup]
            same = (Xn[rows] == Xn[src]).all(1)
            prints[rows[same]] = prints[src[same]]
        self.prints_ = prints
        self.route_ = np.asarray(route, np.int64).reshape(n, -1)
        self.sids_ = np.asarray(sids, np.int64).reshape(n, -1)
        self._cache = None
        return self

    def fingerprint(self, X: Any, chunk: int = 65536) -> np.ndarray:
        """``(X - center_) @ projection_`` as float32 (N, p)."""
        Xn = _as_numpy(X)
        out = np.empty((Xn.shape[0], self.projection_.shape[1]), np.float32)
        for s in range(0, Xn.shape[0], chunk):
            out[s:s + chunk] = (Xn[s:s + chunk] - self.center_) @ self.projection_
        return out

    # --------------------------------------------------------------- state
    @classmethod
    def from_owner(cls, owner: Any, prefix: str = "catalogue_") -> "CatalogueIndex":
        """The index stored on ``owner`` (a tokenizer), cached on it."""
        cached = getattr(owner, "_catalogue_cache", None)
        sids = getattr(owner, prefix + "sids_")
        if cached is not None and cached.sids_ is sids:
            return cached
        obj = cls()
        for a in ("sids_", "route_", "prints_", "center_", "projection_", "tol_"):
            setattr(obj, a, getattr(owner, prefix + a))
        obj._cache = None
        owner._catalogue_cache = obj
        return obj

    def to_owner(self, owner: Any, prefix: str = "catalogue_") -> None:
        for a in ("sids_", "route_", "prints_", "center_", "projection_", "tol_"):
            setattr(owner, prefix + a, getattr(self, a))
        owner._catalogue_cache = self

    @property
    def n_items(self) -> int:
        return int(self.sids_.shape[0])

    def _tables(self) -> dict[str, Any]:
        c = getattr(self, "_cache", None)
        if c is not None:
            return c
        n = self.n_items
        _, first, gid = np.unique(_row_keys(self.route_), return_index=True, return_inverse=True)
        gid = gid.reshape(-1)
        groups = self.route_[first]  # distinct routes, in key order (gid indexes them)
        f0 = self.prints_[:, 0].astype(np.float64)
        tol = float(self.tol_[0])
        lo = float(f0.min()) if n else 0.0
        width = (float(f0.max()) - lo if n else 0.0) + 4.0 * tol + 1.0
        order = np.lexsort((*[self.prints_[:, j] for j in range(self.prints_.shape[1] - 1, -1, -1)], gid))
        key = gid[order] * width + (f0[order] - lo)
        ps = self.prints_[order]
        same = np.zeros(n, bool)
        if n > 1:
            same[1:] = (gid[order][1:] == gid[order][:-1]) & (ps[1:] == ps[:-1]).all(1)
        pos = np.arange(n)
        cls_start = np.maximum.accumulate(np.where(same, 0, pos)) if n else pos
        cls_size = np.bincount(cls_start, minlength=n)[cls_start] if n else pos
        c = {"groups": groups, "order": order, "key": key, "prints": ps, "lo": lo,
             "width": width, "cls_start": cls_start, "cls_size": cls_size}
        self._cache = c
        return c

    # --------------------------------------------------------------- match
    def match(self, X: Any, route: np.ndarray, prints: np.ndarray | None = None) -> np.ndarray:
        """Catalogue item (row of ``sids_``) of every row of ``X``, -1 for a new item.

        Vectorised: a window search on the sorted first fingerprint coordinate within
        the row's route group, then the full fingerprint distance of the candidates
        (usually one).
        """
        route = np.asarray(route, np.int64).reshape(len(route), -1)
        q = route.shape[0]
        out = np.full(q, -1, np.int64)
        if q == 0 or self.n_items == 0:
            return out
        t = self._tables()
        f = self.fingerprint(X) if prints is None else prints
        tol = float(self.tol_[0])
        g = _match_rows(t["groups"], route)
        rows = np.flatnonzero(g >= 0)
        if rows.size == 0:
            return out
        qk = g[rows] * t["width"] + (f[rows, 0].astype(np.float64) - t["lo"])
        lo = np.searchsorted(t["key"], qk - tol, "left")
        hi = np.searchsorted(t["key"], qk + tol, "right")
        cnt = hi - lo
        has = cnt > 0
        rows, lo, cnt = rows[has], lo[has], cnt[has]
        if rows.size == 0:
            return out
        best = np.full(rows.size, -1, np.int64)
        ps = t["prints"]
        # candidates grouped by their number (usually 1-3): no padding to the largest
        for c in np.unique(cnt):  # loop over distinct candidate counts, not items
            allc = np.flatnonzero(cnt == c)
            chunk = max(1, (1 << 22) // int(c * ps.shape[1]))
            for s in range(0, allc.size, chunk):
                sel = allc[s:s + chunk]
                cand = lo[sel, None] + np.arange(c)[None, :]
                diff = ps[cand] - f[rows[sel], None, :]
                d2 = np.einsum("ijk,ijk->ij", diff, diff)
                j = d2.argmin(1)
                ar = np.arange(j.size)
                best[sel] = np.where(d2[ar, j] <= tol * tol, cand[ar, j], -1)
        hit = best >= 0
        rows, best = rows[hit], best[hit]
        # rows matching a class of identical catalogue rows take its members in turn
        start = t["cls_start"][best]
        pos = start + group_ranks(start) % t["cls_size"][best]
        out[rows] = t["order"][pos]
        return out

    def prefix_counts(self) -> "CollisionIndex":
        """Catalogue items per semantic prefix (all SID columns but the last; cached)."""
        c = getattr(self, "_counts", None)
        if c is None or c[0] is not self.sids_:
            sem = self.sids_[:, :-1]
            sizes = tuple(int(k) for k in (sem.max(axis=0) + 1).clip(1)) if sem.size else (1,) * sem.shape[1]
            c = (self.sids_, CollisionIndex().fit(Codes(sem, sizes)))
            self._counts = c
        return c[1]

    def add(self, X: Any, route: np.ndarray, sids: np.ndarray) -> None:
        """Append new items (``encode_new``): later ``encode`` calls return their SIDs."""
        self.prints_ = np.concatenate([self.prints_, self.fingerprint(X)])
        self.route_ = np.concatenate([self.route_, np.asarray(route, np.int64)])
        self.sids_ = np.concatenate([self.sids_, np.asarray(sids, np.int64)])
        self._cache = None


def catalogue_codes(cat: CatalogueIndex, route: Codes, X: Any, *, disambiguate: bool,
                    min_extra_size: int = 1, record: bool = False) -> tuple[Codes, int]:
    """SIDs of the rows of ``X`` whose semantic route ``encode`` computed as ``route``.

    Catalogue items (:meth:`CatalogueIndex.match`) get their catalogue SID whatever
    else is in the batch.  New items keep their route; with ``disambiguate`` they get
    the disambiguation token ``count + rank``: ``count`` = catalogue items under that
    semantic prefix (whose tokens are ``0..count-1``), ``rank`` = order among this
    batch's new items with that prefix -- a SID no catalogue item holds.  With
    ``record`` (``encode_new``) the new items join the catalogue, so later calls return
    the same SIDs for them.  Returns the codes (one more level than ``route`` when
    ``disambiguate``; that level's size is at least ``min_extra_size``, the largest
    group and every token + 1) and the number of new items.
    """
    r = route.codes
    n, L = r.shape
    m = cat.match(X, r)
    seen = m >= 0
    new = ~seen
    sem = r.copy()
    sem[seen] = cat.sids_[m[seen], :L]
    n_new = int(new.sum())
    if not disambiguate:
        out = route.replace(codes=sem)
        if record and n_new:
            cat.add(_take(X, new), r[new], r[new])
        return out, n_new
    token = np.zeros(n, np.int64)
    token[seen] = cat.sids_[m[seen], L]
    index = cat.prefix_counts()
    if n_new:
        c_new = Codes(r[new], route.codebook_sizes)
        gid = index._match(r[new])
        base = np.where(gid >= 0, index.counts_[np.maximum(gid, 0)], 0)
        token[new] = base + group_ranks(c_new.sid_keys())
    extra = max(int(min_extra_size), index.largest_group, int(token.max()) + 1 if n else 1)
    out = _append_token(route.replace(codes=sem), token, extra)
    if record and n_new:
        cat.add(_take(X, new), r[new], out.codes[new])
    return out, n_new


def _take(X: Any, mask: np.ndarray) -> Any:
    if hasattr(X, "detach"):
        import torch

        return X[torch.from_numpy(np.flatnonzero(mask)).to(X.device)]
    return np.asarray(X)[mask]
