"""``diagnose``: every diagnostic of one set of Semantic IDs as plain JSON numbers."""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from ..types import Codes
from .fidelity import CHUNK, fidelity, level_codewords
from .hourglass import DELTA, detect_hourglass
from .overlap import DEFAULT_SCALES, analytic_overlap, data_rms, perturbation_overlap
from .prefix import collisions, prefix_structure, soft_matching
from .usage import semantic_codes, usage


def to_plain(obj: Any) -> Any:
    """Recursively turn numpy scalars/arrays into Python numbers; NaN/inf -> None."""
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_plain(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def codeword_map(codes: Codes, codewords: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """2-D PCA (SVD of the centred used codewords) of every level, with usage counts."""
    out = []
    for l, E in enumerate(codewords):
        k = codes.codebook_sizes[l]
        E = np.asarray(E, dtype=np.float64)[:k]
        tok = codes.codes[:, l]
        counts = np.bincount(tok[tok >= 0], minlength=k)[:k]
        used = np.flatnonzero(counts > 0)
        P = np.zeros((used.size, 2))
        var = [0.0, 0.0]
        if used.size >= 2:
            C = E[used] - E[used].mean(0)
            _, sv, vt = np.linalg.svd(C, full_matrices=False)
            r = min(2, vt.shape[0])
            P[:, :r] = C @ vt[:r].T
            tot = float((sv ** 2).sum())
            var = [float(sv[i] ** 2 / tot) if tot > 0 and i < sv.size else 0.0 for i in range(2)]
        out.append({"level": l + 1, "code": used.tolist(), "x": P[:, 0].tolist(),
                    "y": P[:, 1].tolist(), "count": counts[used].tolist(),
                    "explained_variance": var})
    return out


def _prefix_conditional(codes: Codes, tokenizer: Any) -> bool:
    """Whether a token means "child t of its prefix" (trees) -- from the tokenizer, else
    from the registered tokenizer class of ``codes.method``."""
    if tokenizer is not None:
        return bool(getattr(tokenizer, "prefix_conditional", False))
    from ..tokenizers import available, get_tokenizer_class

    return bool(codes.method in available() and get_tokenizer_class(codes.method).prefix_conditional)


def _codeword_rms(codes: Codes, codewords: Sequence[np.ndarray]) -> float:
    """RMS of the centred residual-sum reconstructions (used when X is not given)."""
    n = codes.n_items
    d = np.asarray(codewords[0]).shape[1]
    s1, s2 = np.zeros(d), 0.0
    for s in range(0, n, CHUNK):
        c = codes.codes[s:s + CHUNK]
        xh = np.zeros((c.shape[0], d))
        for l, E in enumerate(codewords):
            ok = c[:, l] >= 0
            xh += np.where(ok[:, None], np.asarray(E)[np.where(ok, c[:, l], 0)], 0.0)
        s1 += xh.sum(0)
        s2 += float((xh * xh).sum())
    mu = s1 / n
    return float(math.sqrt(max(s2 / (n * d) - float(mu @ mu) / d, 0.0)))


def diagnose(codes: Codes, X: np.ndarray | None = None, tokenizer: Any = None,
             pairs: np.ndarray | None = None, *,
             random_pairs: np.ndarray | None = None,
             X2: np.ndarray | None = None,
             scales: Sequence[float] = DEFAULT_SCALES,
             monte_carlo: bool = True,
             n_mc: int | None = 100_000,
             codewords: Sequence[np.ndarray] | None = None,
             reconstructions: Sequence[np.ndarray | None] | None = None,
             max_exact_sids: int = 4096,
             n_sid_sample: int = 4096,
             hourglass_delta: float = DELTA,
             include_counts: bool = True,
             random_state: int = 0) -> dict[str, Any]:
    """All diagnostics of ``codes`` (docs/diagnostics.md) as a JSON-serialisable dict.

    Code-only metrics (usage, prefix structure, collisions, hourglass) always run.
    A TIGER disambiguation level (``collision_rule="extra_level"``) counts in usage,
    prefix structure and ``collisions`` (final SIDs); ``semantic_collisions`` counts
    items sharing their semantic SID (before that token).  Fidelity, overlap, Monte-Carlo flips and the
    hourglass rule use the semantic levels only (``meta.semantic_levels``).
    With ``X`` (row order of the codes): fidelity and data-estimated codewords;
    with a ``tokenizer``: its codewords, fidelity from ``codebooks_``/``decode`` and the
    Monte-Carlo perturbation overlap (``monte_carlo=True``, at most ``n_mc`` items);
    with ``pairs`` (co-engaged item rows, (M, 2)): soft matching.  Sections that
    cannot run are ``None``.
    """
    if not isinstance(codes, Codes):
        raise DataError(f"codes must be a sidkit Codes artifact, got {type(codes).__name__}",
                        "wrap arrays with sidkit.types.Codes(codes, codebook_sizes)")
    if X is not None:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[0] != codes.n_items:
            raise DataError(f"X must have shape ({codes.n_items}, d), got {X.shape}",
                            "pass the embeddings in the row order of the codes")
    t: dict[str, float] = {}
    res: dict[str, Any] = {
        "meta": {
            "n_items": codes.n_items,
            "n_levels": codes.n_levels,
            "codebook_sizes": list(codes.codebook_sizes),
            "method": codes.method,
            "params": codes.params,
            "collision_rule": codes.collision_rule,
            "variable_length": codes.is_variable_length,
            "mean_length": float(codes.lengths.mean()) if codes.n_items else 0.0,
            "has_embeddings": X is not None,
            "has_tokenizer": tokenizer is not None,
        }
    }
    t0 = time.perf_counter()
    res["usage"] = usage(codes, include_counts=include_counts)
    t["usage"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res["prefix"] = prefix_structure(codes)
    t["prefix"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res["collisions"] = collisions(codes)
    sem = semantic_codes(codes)
    # items sharing their semantic SID (before the disambiguation token): the headline;
    # "collisions" above counts whole final SIDs (0 by construction with a counter level)
    res["semantic_collisions"] = collisions(sem)
    t["collisions"] = time.perf_counter() - t0
    ls = sem.n_levels
    res["meta"]["semantic_levels"] = ls
    res["hourglass"] = detect_hourglass(res["usage"][:ls], res["prefix"][:ls], delta=hourglass_delta)

    res["fidelity"] = None
    if X is not None:
        t0 = time.perf_counter()
        res["fidelity"] = fidelity(sem, X, tokenizer, reconstructions)
        t["fidelity"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cws, cw_source = level_codewords(sem, X, tokenizer, codewords)
    res["overlap"] = None
    res["codeword_map"] = None
    if cws is not None:
        rms = data_rms(X) if X is not None else _codeword_rms(sem, cws)
        ov = analytic_overlap(sem, cws, rms, scales, max_exact=max_exact_sids,
                              n_sample=n_sid_sample, random_state=random_state, X=X,
                              source=cw_source, n_member=n_mc,
                              conditional=_prefix_conditional(sem, tokenizer))
        ov["codewords_source"] = cw_source
        ov["rms_source"] = "data" if X is not None else "codeword reconstructions"
        res["overlap"] = ov
        res["codeword_map"] = codeword_map(sem, cws)
    t["overlap"] = time.perf_counter() - t0

    res["monte_carlo"] = None
    if monte_carlo and tokenizer is not None and X is not None:
        t0 = time.perf_counter()
        res["monte_carlo"] = perturbation_overlap(tokenizer, X, scales, X2=X2, n_sample=n_mc,
                                                  random_state=random_state)
        t["monte_carlo"] = time.perf_counter() - t0

    res["soft_matching"] = None
    if pairs is not None and len(pairs):
        t0 = time.perf_counter()
        res["soft_matching"] = soft_matching(codes, pairs, random_pairs, random_state)
        t["soft_matching"] = time.perf_counter() - t0
    res["timing_s"] = t
    return to_plain(res)
