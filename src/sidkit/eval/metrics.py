"""Ranking metrics on items (never on SIDs), one held-out target per example.

Everything goes through the 0-based **rank** of the target item in the model's
ranking (``-1``: the target is not in the returned list).  With one relevant item
per example the usual definitions reduce to

- ``Recall@k`` (= HR@k) = 1 if rank < k,
- ``NDCG@k`` = 1 / log2(rank + 2) if rank < k (the ideal DCG is 1),
- ``MRR@k`` = 1 / (rank + 1) if rank < k,

averaged over examples.  ``coverage@k`` is the share of the catalogue that appears in
at least one top-k list.

Ties in a score vector are broken deterministically: among equal scores the item
with the **lower catalogue index** ranks first (:func:`ranks_from_scores`,
:func:`topk_from_scores`); ``tie_break="pessimistic"`` instead ranks every item tied
with the target ahead of it.  NaN or infinite scores raise (:func:`check_finite`).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ..errors import DataError

DEFAULT_KS = (5, 10, 20)


def _check_k(k: int, n_items: int | None = None) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataError(f"k must be a positive integer, got {k!r}", "use e.g. k=10")
    if n_items is not None and k > n_items:
        raise DataError(f"k={k} is larger than the catalogue ({n_items} items)",
                        f"use k <= {n_items}")
    return int(k)


TIE_BREAKS = ("index", "pessimistic")


def _check_tie_break(tie_break: str) -> str:
    if tie_break not in TIE_BREAKS:
        raise DataError(f"unknown tie_break {tie_break!r}",
                        "use 'index' (equal scores: the lower catalogue index first) or 'pessimistic' "
                        "(every item tied with the target ranks ahead of it)")
    return tie_break


def check_finite(scores, what: str = "scores") -> None:
    """Raise a :class:`DataError` when ``scores`` holds NaN or +-inf.

    A NaN compares False with everything, so it would otherwise earn the best rank."""
    import torch

    s = torch.as_tensor(scores)
    if not s.is_floating_point():
        return
    if bool(torch.isfinite(s.sum())):       # a NaN or inf anywhere makes the sum NaN or inf
        return
    bad = ~torch.isfinite(s)
    if not bool(bad.any()):                 # the sum overflowed: every value is finite
        return
    if bool(bad.any()):
        rows = torch.nonzero(bad.any(1) if s.ndim == 2 else bad).flatten()[:5].tolist()
        n_nan, n_inf = int(torch.isnan(s).sum()), int(torch.isinf(s).sum())
        raise DataError(f"{what} hold {n_nan} NaN and {n_inf} infinite value(s) (rows {rows}"
                        f"{' ...' if int(bad.any(1).sum() if s.ndim == 2 else bad.sum()) > 5 else ''})",
                        "a model must return finite scores: check its weights (NaN after a diverged "
                        "training?) and inputs")


def ranks_from_scores(scores, targets, exclude=None, *, tie_break: str = "index", return_ties: bool = False):
    """0-based rank of ``targets[b]`` in row ``b`` of ``scores`` (higher = better).

    ``scores``: (B, N) numpy or torch, finite (NaN or inf raise: a NaN would otherwise
    compare False with every score and earn rank 0); ``targets``: (B,) catalogue indices.
    An item ranks before the target when its score is higher, or equal and

    - ``tie_break="index"`` (default): its catalogue index is lower (the order of
      :func:`topk_from_scores`);
    - ``tie_break="pessimistic"``: always (every item tied with the target ranks ahead).

    ``exclude``: optional boolean (B, N) mask of items removed from the ranking; the
    target itself is never removed (callers that mean to drop it clear it themselves).
    Returns int64 numpy (B,); with ``return_ties`` also a (B,) bool array: the target's
    score equals the score of another (not excluded) item.
    """
    import torch

    _check_tie_break(tie_break)
    s = torch.as_tensor(scores)
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=s.device)
    if s.ndim != 2 or t.shape != (s.shape[0],):
        raise DataError(f"scores must be (B, N) and targets (B,), got {tuple(s.shape)} and {tuple(t.shape)}",
                        "pass one score row per target")
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= s.shape[1]):
        raise DataError(f"target indices must lie in [0, {s.shape[1]}), got {int(t.min())}..{int(t.max())}",
                        "map item ids to catalogue indices first")
    check_finite(s)
    st = s.gather(1, t[:, None])
    if exclude is not None:      # excluded items drop below every finite score; the target stays
        ex = torch.as_tensor(exclude, device=s.device).bool().clone()
        ex[torch.arange(len(t), device=s.device), t] = False
        s = s.masked_fill(ex, float("-inf"))
    # two comparisons and two counts over the (B, N) scores; the index tie-break is
    # resolved only in the rows where the target's score is tied (rare for trained models)
    above = (s > st).sum(1, dtype=torch.int32)
    equal = (s == st).sum(1, dtype=torch.int32) - 1        # the target equals itself
    tied_rows = equal > 0
    if tie_break == "index":
        before = above
        rows = torch.nonzero(tied_rows).flatten()
        if rows.numel():
            sr, tr = s[rows], t[rows]
            idx = torch.arange(s.shape[1], device=s.device)
            before[rows] += ((sr == st[rows]) & (idx[None, :] < tr[:, None])).sum(1, dtype=torch.int32)
    else:
        before = above + equal
    ranks = before.cpu().numpy().astype(np.int64)
    if return_ties:
        return ranks, tied_rows.cpu().numpy()
    return ranks


def topk_from_scores(scores, k: int, exclude=None) -> np.ndarray:
    """(B, k) catalogue indices of the ``k`` best items per row, ties to the lower index
    (the order of :func:`ranks_from_scores` with ``tie_break="index"``).

    ``exclude`` (boolean (B, N)) removes items (they are ranked last, after every other
    item, and returned only when fewer than ``k`` items remain).  NaN or infinite scores
    raise, as in :func:`ranks_from_scores`.
    """
    import torch

    s = torch.as_tensor(scores)
    k = _check_k(k, s.shape[1])
    check_finite(s)
    key = s.float() if s.dtype in (torch.float16, torch.bfloat16) else s
    if exclude is not None:
        key = key.masked_fill(torch.as_tensor(exclude, device=s.device).bool(), float("-inf"))
    return _topk_lower_index(key, k).cpu().numpy().astype(np.int64)


def _topk_lower_index(key, k: int):
    """The ``k`` largest of each row, ties to the lower index: the first ``k`` of a stable
    sort of ``-key``, without sorting whole rows.  ``topk`` finds each row's k-th value;
    every item above it is in, and of the items equal to it the lowest indices fill the
    rest; the k chosen (in index order) are then stably sorted by score."""
    import torch

    if k >= key.shape[1] // 4:                        # most of the row: a sort is as cheap
        return torch.sort(-key, dim=1, stable=True).indices[:, :k]
    vals, idx = key.topk(k + 1, dim=1, sorted=True)
    clear = vals[:, k - 1] > vals[:, k]              # the k-th value is not tied with the next one
    if bool(clear.all()):
        # the top k are unambiguous: order them by score, ties among them by index
        top = idx[:, :k].sort(dim=1).values
        order = torch.sort(-key.gather(1, top), dim=1, stable=True).indices
        return top.gather(1, order)
    out = torch.empty((key.shape[0], k), dtype=torch.long, device=key.device)
    rows = torch.nonzero(clear).flatten()
    if rows.numel():
        out[rows] = _topk_lower_index(key[rows], k)
    rows = torch.nonzero(~clear).flatten()
    out[rows] = _tied_topk(key[rows], k)
    return out


def _tied_topk(key, k: int):
    """:func:`_topk_lower_index` for rows whose k-th value has ties beyond the top k."""
    import torch

    kth = key.topk(k, dim=1, sorted=True).values[:, -1:]
    above = key > kth
    equal = key == kth
    need = k - above.sum(1, keepdim=True)
    take = above | (equal & (equal.cumsum(1) <= need))
    idx = torch.nonzero(take)[:, 1].reshape(key.shape[0], k)          # row-major: ascending index
    order = torch.sort(-key.gather(1, idx), dim=1, stable=True).indices
    return idx.gather(1, order)


def ranks_from_lists(topk: np.ndarray, targets) -> np.ndarray:
    """0-based rank of each target in its recommended list, ``-1`` when absent.

    ``topk``: (B, K) catalogue indices (``-1`` marks an invalid or missing slot, e.g.
    a generated SID that maps to no item).  Only the first occurrence counts.
    """
    topk = np.asarray(topk)
    targets = np.asarray(targets)
    if topk.ndim != 2 or targets.shape != (topk.shape[0],):
        raise DataError(f"lists must be (B, K) and targets (B,), got {topk.shape} and {targets.shape}",
                        "pass one list per target")
    hit = topk == targets[:, None]
    return np.where(hit.any(1), hit.argmax(1), -1).astype(np.int64)


def _at(ranks: np.ndarray, k: int) -> np.ndarray:
    return (ranks >= 0) & (ranks < k)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of examples whose target ranks in the top ``k`` (= hit rate with one target)."""
    k = _check_k(k)
    ranks = np.asarray(ranks)
    return float(_at(ranks, k).mean()) if ranks.size else float("nan")


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean of 1/log2(rank + 2) over examples with rank < k (0 otherwise)."""
    k = _check_k(k)
    ranks = np.asarray(ranks)
    if not ranks.size:
        return float("nan")
    gain = np.where(_at(ranks, k), 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
    return float(gain.mean())


def mrr_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean reciprocal rank, counting only ranks < k."""
    k = _check_k(k)
    ranks = np.asarray(ranks)
    if not ranks.size:
        return float("nan")
    return float(np.where(_at(ranks, k), 1.0 / (np.maximum(ranks, 0) + 1.0), 0.0).mean())


def coverage_at_k(topk: np.ndarray, n_items: int, k: int) -> float:
    """Share of the ``n_items`` catalogue appearing in at least one top-``k`` list
    (invalid ``-1`` entries ignored)."""
    k = _check_k(k)
    top = np.asarray(topk)[:, :k]
    valid = top[top >= 0]
    return float(np.unique(valid).size / n_items) if n_items else float("nan")


def metric_names(ks: Sequence[int] = DEFAULT_KS, mrr_k: int = 20, coverage_k: int = 10) -> list[str]:
    return ([f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks]
            + [f"mrr@{mrr_k}", f"coverage@{coverage_k}"])


def ranking_metrics(ranks: np.ndarray, topk: np.ndarray | None, n_items: int,
                    ks: Iterable[int] = DEFAULT_KS, mrr_k: int = 20,
                    coverage_k: int = 10) -> dict[str, float]:
    """Every metric of the protocol from the target ranks (and top lists for coverage)."""
    ks = [_check_k(k) for k in ks]
    out = {f"recall@{k}": recall_at_k(ranks, k) for k in ks}
    out.update({f"ndcg@{k}": ndcg_at_k(ranks, k) for k in ks})
    out[f"mrr@{mrr_k}"] = mrr_at_k(ranks, mrr_k)
    if topk is not None:
        out[f"coverage@{coverage_k}"] = coverage_at_k(topk, n_items, coverage_k)
    return out
