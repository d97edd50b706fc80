"""Evaluation harness: sequences from a split, item-level ranking metrics, ``evaluate``.

See ``docs/evaluation.md`` for the protocol.
"""

from .harness import as_sequence_data, evaluate, format_metrics_table
from .metrics import (DEFAULT_KS, coverage_at_k, metric_names, mrr_at_k, ndcg_at_k, ranking_metrics,
                      ranks_from_lists, ranks_from_scores, recall_at_k, topk_from_scores)
from .sequences import PAD, SequenceData, encode_items, pad_left

__all__ = ["DEFAULT_KS", "PAD", "SequenceData", "as_sequence_data", "coverage_at_k", "encode_items",
           "evaluate", "format_metrics_table", "metric_names", "mrr_at_k", "ndcg_at_k", "pad_left",
           "ranking_metrics", "ranks_from_lists", "ranks_from_scores", "recall_at_k", "topk_from_scores"]
