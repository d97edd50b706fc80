"""Per-level code usage: counts, entropy, perplexity, Gini, top-1% share.

All functions are vectorised (``np.bincount``); formulas are in ``docs/diagnostics.md``.
Levels are reported 1-based in the output (``"level": 1`` is the first token).
Items whose SID is shorter than a level (variable-length SIDs) do not count at
that level.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..tokenizers.base import counts_perplexity, entropy_bits
from ..types import Codes


def level_tokens(codes: Codes, level: int) -> np.ndarray:
    """Tokens of the items that have a token at 0-based ``level`` (PAD dropped)."""
    col = codes.codes[:, level]
    return col[codes.lengths > level]


def level_counts(codes: Codes, level: int) -> np.ndarray:
    """(K_l,) int64 item count of every code of 0-based ``level`` (unused codes = 0)."""
    return np.bincount(level_tokens(codes, level), minlength=codes.codebook_sizes[level]).astype(np.int64)


def gini(counts: np.ndarray) -> float:
    """Gini coefficient over all entries (zeros included): 0 = equal, (K-1)/K = one entry."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    k = x.size
    total = x.sum()
    if k == 0 or total <= 0:
        return 0.0
    i = np.arange(1, k + 1, dtype=np.float64)
    return float(((2 * i - k - 1) * x).sum() / (k * total))


def top_share(counts: np.ndarray, frac: float = 0.01) -> float:
    """Share of items held by the ``ceil(frac * K)`` most used codes (K = all codes)."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if c.size == 0 or total <= 0:
        return 0.0
    m = max(1, int(math.ceil(frac * c.size)))
    top = np.partition(c, c.size - m)[c.size - m:] if m < c.size else c
    return float(top.sum() / total)


def inverse_simpson(counts: np.ndarray) -> float:
    """1 / sum_j pi_j^2 -- the effective capacity with the identity kernel."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return 0.0
    p = c / total
    return float(1.0 / (p * p).sum())


def usage_stats(counts: np.ndarray) -> dict[str, Any]:
    """Every usage statistic of one code-count vector (length K, unused codes = 0)."""
    c = np.asarray(counts, dtype=np.int64)
    k = int(c.size)
    h = entropy_bits(c)
    used = int((c > 0).sum())
    return {
        "K": k,
        "n": int(c.sum()),
        "used": used,
        "used_frac": used / k if k else 0.0,
        "entropy_bits": h,
        "norm_entropy": h / math.log2(k) if k > 1 else (1.0 if used else 0.0),
        "perplexity": counts_perplexity(c),
        "gini": gini(c),
        "std_counts": float(c.std()) if k else 0.0,
        "top1pct_share": top_share(c, 0.01),
        "inverse_simpson": inverse_simpson(c),
        "max_count": int(c.max()) if k else 0,
    }


def usage(codes: Codes, include_counts: bool = True) -> list[dict[str, Any]]:
    """Usage statistics of every level (list index = 0-based level)."""
    out = []
    for l in range(codes.n_levels):
        c = level_counts(codes, l)
        d = {"level": l + 1, **usage_stats(c)}
        if include_counts:
            d["counts"] = c.tolist()
        out.append(d)
    return out


def semantic_codes(codes: Codes) -> Codes:
    """The codes without their disambiguation token (see :meth:`Codes.semantic`).

    A TIGER extra level or GAOQ's item-enumerating last level is a counter with no
    geometry; fidelity, overlap, Monte-Carlo flips and hourglass detection look at the
    semantic levels only.
    """
    return codes.semantic()
