"""Prefix structure, collisions and behaviour-aware soft matching.

* conditional entropy ``H(c_l | c_<l) = sum_p P(p) H(c_l | p)``, computed as
  ``H(c_<=l) - H(c_<l)`` over the items that have a token at level ``l``;
* children per parent (fan-out) and path sparsity
  ``1 - distinct prefixes / min(N_l, prod_{m<=l} K_m)``;
* collisions of whole SIDs;
* shared-prefix length of item pairs and the AUC separating co-engaged from random
  pairs (ties count 1/2).

Everything is ``np.unique`` / ``np.bincount`` over int64 prefix keys; no Python loop
over items.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import DataError
from ..types import PAD, Codes
from ..utils import rng
from .usage import entropy_bits


def _key_entropy(keys: np.ndarray) -> float:
    if keys.size == 0:
        return 0.0
    _, counts = np.unique(keys, return_counts=True)
    return entropy_bits(counts)


def prefix_structure(codes: Codes) -> list[dict[str, Any]]:
    """Per level: conditional entropy, fan-out of parents and path sparsity."""
    out = []
    for l in range(codes.n_levels):
        valid = codes.lengths > l
        n_l = int(valid.sum())
        child = codes.prefix_keys(l + 1)[valid]
        parent = codes.prefix_keys(l)[valid]
        h_joint = _key_entropy(child)
        h_parent = _key_entropy(parent)
        cond = max(0.0, h_joint - h_parent)
        k = codes.codebook_sizes[l]
        uniq_child, first = np.unique(child, return_index=True)
        _, children = np.unique(parent[first], return_counts=True)
        capacity = min(n_l, math.prod(codes.codebook_sizes[: l + 1]))
        n_prefix = int(uniq_child.size)
        fan = np.bincount(children, minlength=1) if children.size else np.zeros(1, np.int64)
        out.append({
            "level": l + 1,
            "n": n_l,
            "cond_entropy_bits": cond,
            "norm_cond_entropy": cond / math.log2(k) if k > 1 else 0.0,
            "n_parents": int(children.size),
            "children_mean": float(children.mean()) if children.size else 0.0,
            "children_min": int(children.min()) if children.size else 0,
            "children_max": int(children.max()) if children.size else 0,
            # children_hist[c] = number of parents with exactly c children
            "children_hist": fan.astype(np.int64).tolist(),
            "n_prefixes": n_prefix,
            "path_capacity": int(capacity),
            "path_sparsity": float(1.0 - n_prefix / capacity) if capacity else 0.0,
        })
    return out


def collisions(codes: Codes) -> dict[str, Any]:
    """Collision statistics of whole SIDs (two items with the same token sequence)."""
    n = codes.n_items
    if n == 0:
        return {"n_items": 0, "n_unique": 0, "rate": 0.0, "share_in_collision": 0.0,
                "largest_group": 0, "n_groups": 0}
    _, counts = np.unique(codes.sid_keys(), return_counts=True)
    coll = counts[counts > 1]
    return {
        "n_items": n,
        "n_unique": int(counts.size),
        "rate": float((n - counts.size) / n),
        "share_in_collision": float(coll.sum() / n),
        "largest_group": int(counts.max()),
        "n_groups": int(coll.size),
    }


def shared_prefix_length(codes: Codes | np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Number of leading tokens the SIDs of rows ``a`` and ``b`` share (vectorised)."""
    arr = codes.codes if isinstance(codes, Codes) else np.asarray(codes)
    A, B = arr[np.asarray(a)], arr[np.asarray(b)]
    return _lcp(A, B)


def _lcp(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    eq = (A == B) & (A != PAD)
    return np.cumprod(eq, axis=1, dtype=np.int8).sum(axis=1).astype(np.int64)


def auc_ties_half(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + 0.5 P(pos == neg) for independent draws (Mann-Whitney AUC)."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    upto = np.searchsorted(neg_sorted, pos, side="right")
    return float((below + 0.5 * (upto - below)).sum() / (pos.size * neg.size))


def random_pairs(n_items: int, m: int, random_state: Any = 0) -> np.ndarray:
    """``m`` uniform pairs of distinct items, (m, 2) int64."""
    if n_items < 2:
        raise DataError("random pairs need at least 2 items", "diagnose codes of two or more items")
    g = rng(random_state)
    a = g.integers(0, n_items, size=m)
    b = (a + g.integers(1, n_items, size=m)) % n_items  # uniform over b != a
    return np.stack([a, b], axis=1).astype(np.int64)


def soft_matching(codes: Codes, pairs: np.ndarray, negatives: np.ndarray | None = None,
                  random_state: Any = 0) -> dict[str, Any]:
    """Shared-prefix length of co-engaged pairs vs random pairs and the separating AUC.

    ``pairs`` is an (M, 2) array of item rows co-engaged in user sequences;
    ``negatives`` defaults to M uniform random pairs of distinct items.
    """
    pairs = np.asarray(pairs, dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise DataError(f"pairs must be an (M, 2) array of item rows, got shape {pairs.shape}",
                        "pass pairs of item row indices, one pair per row")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= codes.n_items):
        raise DataError(f"pairs contain item rows outside 0..{codes.n_items - 1}",
                        "map item ids to Codes rows first")
    if negatives is None:
        negatives = random_pairs(codes.n_items, max(1, len(pairs)), random_state)
    negatives = np.asarray(negatives, dtype=np.int64)
    pos = shared_prefix_length(codes, pairs[:, 0], pairs[:, 1])
    neg = shared_prefix_length(codes, negatives[:, 0], negatives[:, 1])
    L = codes.n_levels
    return {
        "n_pairs": int(pos.size),
        "n_random": int(neg.size),
        "mean_shared_prefix_pairs": float(pos.mean()) if pos.size else float("nan"),
        "mean_shared_prefix_random": float(neg.mean()) if neg.size else float("nan"),
        "hist_pairs": np.bincount(pos, minlength=L + 1).tolist(),
        "hist_random": np.bincount(neg, minlength=L + 1).tolist(),
        "auc": auc_ties_half(pos, neg),
    }
