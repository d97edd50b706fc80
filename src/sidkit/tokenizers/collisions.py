"""Semantic-ID collisions: report them, resolve them with an extra level (TIGER).

Two items *collide* when their whole SIDs (tokens and length) are equal.
:func:`resolve_collisions` appends one disambiguation token that numbers the items
inside each group of identical SIDs (0, 1, 2, ... in item order), so every item gets
a distinct SID and ``Codes.lookup`` maps each SID back to exactly one item.
:class:`CollisionIndex` remembers how many items each base SID already holds so that
new (cold-start) items get the next free number under their SID without changing
the codes of existing items.

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

__all__ = ["collision_stats", "resolve_collisions", "group_ranks", "CollisionIndex"]


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
    pos = np.arange(n, dtype=np.int64)
    first = np.maximum.accumulate(np.where(start, pos, 0))
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = pos - first
    return ranks


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
        if codes.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        both = np.concatenate([self.rows_, codes], axis=0)
        _, inv = np.unique(_row_keys(both), return_inverse=True)
        inv = inv.reshape(-1)
        g = self.rows_.shape[0]
        lut = np.full(inv.max() + 1, -1, dtype=np.int64)
        lut[inv[:g]] = np.arange(g)
        return lut[inv[g:]]

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
