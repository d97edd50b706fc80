"""Semantic-ID diagnostics (the DRQ and hourglass papers; docs/diagnostics.md).

``diagnose(codes, X=None, tokenizer=None, pairs=None, ...)`` computes every metric as
plain JSON numbers; ``write_report(results, out_dir)`` renders one self-contained
HTML page (plus ``report.json`` / ``report.md``) for one or several tokenizers.
Formulas: ``docs/diagnostics.md``.
"""

from .core import codeword_map, diagnose, to_plain
from .fields import field_prediction
from .fidelity import data_codewords, fidelity, level_codewords, prefix_mean_fidelity
from .hourglass import detect_hourglass
from .overlap import (
    DEFAULT_SCALES,
    analytic_overlap,
    bhattacharyya_kernel,
    compare_codes,
    data_rms,
    effective_capacity,
    expected_overlap,
    overlap_from_confusion,
    overlap_from_labels,
    perturbation_overlap,
    sid_overlap,
)
from .prefix import (
    auc_ties_half,
    collisions,
    prefix_structure,
    random_pairs,
    shared_prefix_length,
    soft_matching,
)
from .report import write_report
from .usage import (
    entropy_bits,
    gini,
    inverse_simpson,
    level_counts,
    semantic_codes,
    top_share,
    usage,
    usage_stats,
)

__all__ = [
    "DEFAULT_SCALES", "analytic_overlap", "auc_ties_half", "bhattacharyya_kernel",
    "codeword_map", "collisions", "compare_codes", "data_codewords", "data_rms",
    "detect_hourglass", "diagnose", "field_prediction", "effective_capacity", "entropy_bits",
    "expected_overlap", "fidelity", "gini", "inverse_simpson", "level_codewords",
    "level_counts", "overlap_from_confusion", "overlap_from_labels",
    "perturbation_overlap", "prefix_mean_fidelity", "prefix_structure", "random_pairs", "semantic_codes",
    "shared_prefix_length", "sid_overlap", "soft_matching", "to_plain", "top_share",
    "usage", "usage_stats", "write_report",
]
