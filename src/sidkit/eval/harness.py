"""``evaluate(model, data, role)``: the one evaluation every recommender goes through.

The protocol (see ``docs/evaluation.md``): one target per example (leave-one-out: the
validation or the test item of each user); the input is the user's history before
the target (for test: train + the validation item), truncated to the model's
``max_len``; full ranking over every catalogue item, no negative sampling; seen items
are not masked unless ``mask_seen=True`` (then in every model, generative ones
inside the beam, and never the target); ties go to the lower catalogue index unless
``tie_break="pessimistic"``; NaN or infinite scores raise.
Users are processed in batches (no Python loop over users inside a batch).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import numpy as np

from ..errors import DataError
from .metrics import (DEFAULT_KS, _check_k, _check_tie_break, check_finite, coverage_at_k, ranking_metrics,
                      ranks_from_lists, ranks_from_scores, topk_from_scores)
from .sequences import SequenceData


def as_sequence_data(data) -> SequenceData:
    if isinstance(data, SequenceData):
        return data
    from ..data import Split

    if isinstance(data, Split):
        return SequenceData.from_split(data)
    raise DataError(f"evaluate needs a Split or SequenceData, got {type(data).__name__}",
                    "pass the split the model was trained on")


def _seen_mask(seen_flat: np.ndarray, seen_offsets: np.ndarray, lo: int, hi: int, n_items: int) -> np.ndarray:
    a, b = seen_offsets[lo], seen_offsets[hi]
    counts = np.diff(seen_offsets[lo:hi + 1])
    rows = np.repeat(np.arange(hi - lo), counts)
    mask = np.zeros((hi - lo, n_items), dtype=bool)
    mask[rows, seen_flat[a:b] - 1] = True
    return mask


def evaluate(model, data, role: str = "test", *, ks: Iterable[int] = DEFAULT_KS, mrr_k: int = 20,
             coverage_k: int = 10, mask_seen: bool = False, tie_break: str = "index", batch_size: int = 1024,
             max_len: int | None = None, return_ranks: bool = False) -> dict[str, Any]:
    """Item-level metrics of ``model`` on the ``role`` examples of ``data``.

    ``data``: the :class:`~sidkit.data.Split` (or its :class:`SequenceData`) the model
    was trained on.  ``mask_seen``: the items of each user's input history are removed
    from the ranking -- by score models before the top k, by generative models inside
    the beam search (``recommend(..., exclude=)``), so every model returns a full list
    of unseen items; the target itself is never removed, in either path (a repeated
    target competes with the unseen items only).  ``tie_break``: ``"index"`` (equal
    scores: lower catalogue index first) or ``"pessimistic"`` (every item tied with the
    target ranks ahead of it).  Scores must be finite: a NaN or infinite score raises a
    :class:`~sidkit.errors.DataError` naming the model and the batch.

    Returns ``{"recall@5": ..., "ndcg@10": ..., "mrr@20": ..., "coverage@10": ...,
    "invalid_rate": ... (generative models only), "tie_rate": ... (score models only:
    the share of examples whose target's score equals another candidate's), "n_examples":
    B, "mask_seen": bool, "tie_break": str, "seconds": s}`` (and ``"ranks"``, the 0-based
    target ranks with -1 = not returned, when ``return_ranks``).
    """
    t0 = time.perf_counter()
    data = as_sequence_data(data)
    model.check_catalogue(data)
    ks = sorted({_check_k(k, data.n_items) for k in ks})
    _check_k(mrr_k, data.n_items)
    _check_k(coverage_k, data.n_items)
    _check_tie_break(tie_break)
    kmax = max(max(ks), mrr_k, coverage_k)
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}", "use e.g. 1024")
    max_len = int(max_len or getattr(model, "max_len", None) or 50)
    inp = data.eval_inputs(role, max_len)
    B = len(inp["targets"])
    if B == 0:
        raise DataError(f"the split has no {role} examples (a {role} item with some history before it)",
                        "check the split: leave-one-out needs users with at least 3 interactions "
                        "for validation, 2 for test")
    name = type(model).__name__
    if mask_seen and not model.scores_all_items and not _accepts_exclude(model):
        raise DataError(f"{name}.recommend takes no exclude= mask, so mask_seen cannot remove the seen "
                        "items inside its search", "add an exclude=None parameter to recommend (see "
                        "sidkit.models.beam_search), or evaluate with mask_seen=False")
    ranks = np.empty(B, dtype=np.int64)
    ties = np.zeros(B, dtype=bool)
    tops = np.empty((B, coverage_k), dtype=np.int64)
    n_invalid = n_slots = 0
    for lo in range(0, B, batch_size):
        hi = min(lo + batch_size, B)
        hist, tgt = inp["history"][lo:hi], inp["targets"][lo:hi]
        seen = None
        if mask_seen:
            seen = _seen_mask(inp["seen_flat"], inp["seen_offsets"], lo, hi, data.n_items)
            seen[np.arange(hi - lo), tgt] = False            # the target is never masked
        if model.scores_all_items:
            scores = model.scores(hist)
            check_finite(scores, f"{name}'s scores for {role} examples {lo}..{hi - 1}")
            ranks[lo:hi], ties[lo:hi] = ranks_from_scores(scores, tgt, exclude=seen, tie_break=tie_break,
                                                          return_ties=True)
            tops[lo:hi] = topk_from_scores(scores, coverage_k, exclude=seen)
        else:
            kw: dict[str, Any] = {}
            if getattr(model, "uses_user_ids", False):
                kw["users"] = inp["users"][lo:hi]
            if seen is not None:
                kw["exclude"] = seen
            lists = np.asarray(model.recommend(hist, kmax, **kw))
            if lists.ndim != 2 or lists.shape[0] != hi - lo or lists.shape[1] > kmax:
                raise DataError(f"{name}.recommend returned shape {lists.shape}, "
                                f"expected ({hi - lo}, <= {kmax})", "return one list of catalogue indices per user")
            if seen is not None and bool((seen[np.arange(hi - lo)[:, None], np.maximum(lists, 0)]
                                          & (lists >= 0)).any()):
                raise DataError(f"{name}.recommend returned excluded (seen) items for {role} examples "
                                f"{lo}..{hi - 1}", "honour the exclude= mask inside the search")
            n_invalid += int((lists < 0).sum())
            n_slots += lists.size
            ranks[lo:hi] = ranks_from_lists(lists, tgt)
            t = np.full((hi - lo, coverage_k), -1, dtype=np.int64)
            t[:, :min(coverage_k, lists.shape[1])] = lists[:, :coverage_k]
            tops[lo:hi] = t
    out: dict[str, Any] = ranking_metrics(ranks, None, data.n_items, ks, mrr_k, coverage_k)
    out[f"coverage@{coverage_k}"] = coverage_at_k(tops, data.n_items, coverage_k)
    if model.scores_all_items:
        out["tie_rate"] = float(ties.mean())
    else:
        out["invalid_rate"] = n_invalid / n_slots if n_slots else 0.0
    out.update(n_examples=int(B), mask_seen=bool(mask_seen), tie_break=tie_break,
               seconds=time.perf_counter() - t0)
    if return_ranks:
        out["ranks"] = ranks
    return out


def _accepts_exclude(model) -> bool:
    import inspect

    try:
        params = inspect.signature(model.recommend).parameters
    except (TypeError, ValueError):
        return False
    return "exclude" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def format_metrics_table(rows: list[dict[str, Any]], metrics: list[str], label: str = "model") -> str:
    """A Markdown table: one row per dict (``rows[i][label]`` then the metrics)."""
    head = f"| {label} | " + " | ".join(metrics) + " |"
    sep = "|---|" + "---:|" * len(metrics)
    lines = [head, sep]
    for r in rows:
        vals = [r.get(m) for m in metrics]
        lines.append(f"| {r.get(label, '')} | " + " | ".join(
            "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in vals) + " |")
    return "\n".join(lines)
