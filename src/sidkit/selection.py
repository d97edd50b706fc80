"""Choosing between configurations: on validation figures, never on test.

Every choice a study, benchmark, grid table or preset makes -- codebook sizes, levels,
tokenizer, embedding, beam width, model size, epochs -- goes through :func:`select_best`,
which reads **validation** NDCG@10 (``docs/evaluation.md``, "Choosing on validation").
Test figures are reported beside the choice and never used to make it.  The function
refuses a test figure (``role="test"`` or a metric named ``test_...``), so a caller
switched to the test split fails loudly instead of silently selecting on test.

A *candidate* is any of the shapes sidkit writes:

* a run record: ``{"valid": {"ndcg@10": 0.07, ...}, "test": {...}, ...}``
  (``docs/results.json``, ``recommender/metrics.json``);
* a list of run records, one per seed: the mean of their validation figures;
* a grid row of ``sidkit experiment``: ``{"valid_ndcg@10_mean": 0.07, ...}``;
* a summary of :func:`sidkit.recommender_stage.summarise`:
  ``{"valid": {"ndcg@10": {"mean": 0.07, "std": ...}}}``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from .errors import ConfigError, DataError

SELECTION_ROLE = "valid"
SELECTION_METRIC = "ndcg@10"


def _check(metric: str, role: str) -> None:
    if role != SELECTION_ROLE:
        raise ConfigError(f"selection on the {role!r} split: sidkit chooses on validation figures only "
                          "(docs/evaluation.md, 'Choosing on validation')",
                          "pass role='valid' (the default) and report the test figures beside the choice")
    m = str(metric).strip().lower()
    if m.startswith(("test", "valid")) or "/" in m:
        raise ConfigError(f"selection metric {metric!r}: name the metric alone (e.g. 'ndcg@10'); the split "
                          "is always validation", "pass metric='ndcg@10' (the default)")


def _one(rec: Mapping[str, Any], metric: str) -> float | None:
    """The validation figure of one record, grid row or summary (None: it has none)."""
    flat = rec.get(f"valid_{metric}_mean")
    if flat is not None:
        return float(flat)
    role = rec.get(SELECTION_ROLE)
    if isinstance(role, Mapping) and metric in role:
        v = role[metric]
        if isinstance(v, Mapping):                      # a summary: {"mean": .., "std": ..}
            v = v.get("mean")
        return None if v is None else float(v)
    return None


def validation_score(candidate: Any, metric: str = SELECTION_METRIC, role: str = SELECTION_ROLE) -> float:
    """The validation ``metric`` of ``candidate`` (mean over its seeds for a list of records)."""
    _check(metric, role)
    recs = list(candidate) if isinstance(candidate, (list, tuple)) else [candidate]
    vals = [_one(r, metric) if isinstance(r, Mapping) else None for r in recs]
    if not recs or any(v is None for v in vals):
        raise DataError(f"a candidate has no validation {metric}: it cannot take part in a choice",
                        "evaluate every candidate on the validation split (test figures never choose)")
    score = sum(vals) / len(vals)
    if not math.isfinite(score):
        raise DataError(f"a candidate's validation {metric} is {score}", "check the run that produced it")
    return score


def select_best(candidates: Mapping[Hashable, Any] | Sequence[Any], metric: str = SELECTION_METRIC,
                role: str = SELECTION_ROLE) -> Hashable:
    """The key (mapping) or index (sequence) of the candidate with the highest validation
    ``metric``.  Ties go to the first candidate in order, so list the cheaper setting first
    (e.g. the narrower beam).  ``role`` other than ``"valid"`` and metrics named after a split
    are refused (:class:`~sidkit.errors.ConfigError`)."""
    _check(metric, role)
    items = list(candidates.items()) if isinstance(candidates, Mapping) else list(enumerate(candidates))
    if not items:
        raise DataError("nothing to choose from", "pass at least one candidate")
    best_key, best = None, -math.inf
    for key, cand in items:
        s = validation_score(cand, metric, role)
        if s > best:
            best_key, best = key, s
    return best_key
