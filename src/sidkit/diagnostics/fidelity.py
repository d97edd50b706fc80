"""Reconstruction fidelity after each level, and the codewords of every level.

Per level ``l`` (reconstruction from the first ``l`` tokens, ``x_hat_l``):

* ``rel_mse = sum_i ||x_i - x_hat_l,i||^2 / sum_i ||x_i||^2``
* ``mse = mean_i ||x_i - x_hat_l,i||^2 / d`` (per coordinate)
* ``cosine = mean_i cos(x_i, x_hat_l,i)`` (0 where ``x_hat`` is 0)

Sources, best first: explicit per-level ``reconstructions``; a tokenizer's
``codebooks_`` (residual sums ``sum_{m<=l} e^m_{c_m}``, used only when the full sum
matches ``tokenizer.decode``); ``tokenizer.decode`` (last level only).  Independent of
any tokenizer, ``prefix_mean`` reconstructs an item by the mean embedding of the
items sharing its depth-``l`` prefix (the best any decoder can do from the prefix
in the squared-error sense), which makes tokenizers comparable.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from ..types import Codes

CHUNK = 65536


def _subset(codes: Codes, rows: slice | np.ndarray) -> Codes:
    return codes.replace(codes=codes.codes[rows], lengths=codes.lengths[rows], item_ids=None)


def _accumulate(X: np.ndarray, Xh: np.ndarray, acc: np.ndarray) -> None:
    """acc += [sum err^2, sum cos]."""
    X = X.astype(np.float64, copy=False)
    Xh = Xh.astype(np.float64, copy=False)
    diff = X - Xh
    acc[0] += float(np.einsum("ij,ij->", diff, diff))
    nx = np.sqrt(np.einsum("ij,ij->i", X, X))
    nh = np.sqrt(np.einsum("ij,ij->i", Xh, Xh))
    dot = np.einsum("ij,ij->i", X, Xh)
    den = nx * nh
    acc[1] += float(np.where(den > 0, dot / np.where(den > 0, den, 1.0), 0.0).sum())


def _finish(acc: np.ndarray, sq_norm: float, n: int, d: int, level: int) -> dict[str, Any]:
    return {
        "level": level,
        "rel_mse": float(acc[0] / sq_norm) if sq_norm > 0 else float("nan"),
        "mse": float(acc[0] / (n * d)),
        "cosine": float(acc[1] / n),
    }


def _sq_norm(X: np.ndarray) -> float:
    tot = 0.0
    for s in range(0, X.shape[0], CHUNK):
        x = np.asarray(X[s:s + CHUNK], dtype=np.float64)
        tot += float(np.einsum("ij,ij->", x, x))
    return tot


def group_sums(inv: np.ndarray, n_groups: int, X: np.ndarray) -> np.ndarray:
    """(G, d) float64 sums of the rows of X per group id ``inv`` (sparse matmul)."""
    n = inv.size
    M = sp.csr_matrix((np.ones(n, dtype=np.float64), (inv, np.arange(n))), shape=(n_groups, n))
    out = np.zeros((n_groups, X.shape[1]), dtype=np.float64)
    for s in range(0, n, CHUNK):  # chunk over items to bound memory
        out += M[:, s:s + CHUNK] @ np.asarray(X[s:s + CHUNK], dtype=np.float64)
    return out


def _prefix_means(codes: Codes, X: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inv, means, counts): group id of every item and mean embedding per depth-prefix."""
    _, inv = np.unique(codes.prefix_keys(depth), return_inverse=True)
    inv = inv.reshape(-1)
    g = int(inv.max()) + 1 if inv.size else 0
    counts = np.bincount(inv, minlength=g)
    means = group_sums(inv, g, X) / np.maximum(counts, 1)[:, None]
    return inv, means, counts


def prefix_mean_fidelity(codes: Codes, X: np.ndarray) -> list[dict[str, Any]]:
    """Fidelity of the prefix-mean reconstruction after every level."""
    n, d = X.shape
    sq = _sq_norm(X)
    out = []
    for l in range(codes.n_levels):
        inv, means, _ = _prefix_means(codes, X, l + 1)
        acc = np.zeros(2)
        for s in range(0, n, CHUNK):
            _accumulate(np.asarray(X[s:s + CHUNK]), means[inv[s:s + CHUNK]], acc)
        out.append(_finish(acc, sq, n, d, l + 1))
    return out


def tokenizer_codebooks(tokenizer: Any, codes: Codes, d: int | None = None) -> list[np.ndarray] | None:
    """Per-level (K_l, d) codeword arrays from ``tokenizer.codebooks_``, or None.

    Accepts an (L, K, d) array or a sequence of L (K_l, d) arrays; rejects
    shapes that do not match the codes (e.g. per-parent codebooks).
    """
    cb = getattr(tokenizer, "codebooks_", None)
    if cb is None:
        return None
    try:
        levels = [np.asarray(c, dtype=np.float64) for c in cb]
    except Exception:  # pragma: no cover - exotic attribute
        return None
    if len(levels) != codes.n_levels:
        return None
    for l, c in enumerate(levels):
        if c.ndim != 2 or c.shape[0] < codes.codebook_sizes[l] or (d is not None and c.shape[1] != d):
            return None
    return levels


def _residual_sums(levels: Sequence[np.ndarray], codes: Codes, rows: slice) -> list[np.ndarray]:
    c = codes.codes[rows]
    xh = np.zeros((c.shape[0], levels[0].shape[1]), dtype=np.float64)
    out = []
    for l, cb in enumerate(levels):
        tok = c[:, l]
        ok = tok >= 0
        xh = xh + np.where(ok[:, None], cb[np.where(ok, tok, 0)], 0.0)
        out.append(xh)
    return out


def _decode(tokenizer: Any, codes: Codes, rows: slice) -> np.ndarray:
    return np.asarray(tokenizer.decode(_subset(codes, rows)), dtype=np.float64)


def codebooks_match_decode(tokenizer: Any, levels: Sequence[np.ndarray], codes: Codes,
                           n_check: int = 256, rtol: float = 1e-3) -> bool:
    """True when the residual sum of ``codebooks_`` equals ``decode`` on a few items."""
    if not hasattr(tokenizer, "decode") or codes.n_items == 0:
        return True
    rows = slice(0, min(n_check, codes.n_items))
    try:
        dec = _decode(tokenizer, codes, rows)
    except Exception:
        return True  # decode unusable: trust the codebooks
    mine = _residual_sums(levels, codes, rows)[-1]
    if dec.shape != mine.shape:
        return False
    scale = max(float(np.abs(dec).max()), 1e-12)
    return float(np.abs(dec - mine).max()) <= rtol * scale


def fidelity(codes: Codes, X: np.ndarray, tokenizer: Any = None,
             reconstructions: Sequence[np.ndarray | None] | None = None,
             prefix_mean: bool = True) -> dict[str, Any]:
    """Per-level fidelity from the best available source, plus the prefix-mean bound."""
    X = np.asarray(X)
    n, d = X.shape
    if n != codes.n_items:
        from ..errors import DataError

        raise DataError(f"X has {n} rows but codes have {codes.n_items} items",
                        "pass the embeddings in the row order of the codes")
    sq = _sq_norm(X)
    L = codes.n_levels
    levels: list[dict[str, Any] | None] = [None] * L
    source = None
    if reconstructions is not None:
        source = "reconstructions"
        for l, R in enumerate(reconstructions):
            if R is None:
                continue
            acc = np.zeros(2)
            for s in range(0, n, CHUNK):
                _accumulate(np.asarray(X[s:s + CHUNK]), np.asarray(R[s:s + CHUNK]), acc)
            levels[l] = _finish(acc, sq, n, d, l + 1)
    elif tokenizer is not None:
        cbs = tokenizer_codebooks(tokenizer, codes, d)
        if cbs is not None and codebooks_match_decode(tokenizer, cbs, codes):
            source = "codebooks"
            accs = np.zeros((L, 2))
            for s in range(0, n, CHUNK):
                rows = slice(s, s + CHUNK)
                for l, xh in enumerate(_residual_sums(cbs, codes, rows)):
                    _accumulate(np.asarray(X[rows]), xh, accs[l])
            levels = [_finish(accs[l], sq, n, d, l + 1) for l in range(L)]
        elif hasattr(tokenizer, "decode"):
            source = "decode"
            acc = np.zeros(2)
            for s in range(0, n, CHUNK):
                rows = slice(s, s + CHUNK)
                _accumulate(np.asarray(X[rows]), _decode(tokenizer, codes, rows), acc)
            levels[L - 1] = _finish(acc, sq, n, d, L)
    return {
        "source": source,
        "levels": levels,
        "prefix_mean": prefix_mean_fidelity(codes, X) if prefix_mean else None,
    }


def data_codewords(codes: Codes, X: np.ndarray) -> list[np.ndarray]:
    """Tokenizer-free residual codewords estimated from the data.

    ``e^l_j = mean over items with c_l = j of (x - m_{c_<l}(x))`` where ``m_p`` is the
    mean embedding of the items with prefix ``p`` (``m`` of the empty prefix = 0).
    Unused codes get a zero codeword (they carry no usage mass).
    """
    n, d = X.shape
    out = []
    parent_inv = np.zeros(n, dtype=np.int64)
    parent_means = np.zeros((1, d))
    for l in range(codes.n_levels):
        k = codes.codebook_sizes[l]
        tok = codes.codes[:, l]
        ok = tok >= 0
        t = np.where(ok, tok, k)  # PAD -> dump bucket k
        sums = group_sums(t, k + 1, X)[:k]
        A = sp.csr_matrix((np.ones(n), (t, parent_inv)), shape=(k + 1, parent_means.shape[0]))
        sums -= (A @ parent_means)[:k]
        cnt = np.bincount(t, minlength=k + 1)[:k]
        out.append(sums / np.maximum(cnt, 1)[:, None])
        parent_inv, parent_means, _ = _prefix_means(codes, X, l + 1)
    return out


def level_codewords(codes: Codes, X: np.ndarray | None = None, tokenizer: Any = None,
                    codewords: Sequence[np.ndarray] | None = None) -> tuple[list[np.ndarray] | None, str | None]:
    """Codewords of every level and where they came from (explicit/tokenizer/data)."""
    if codewords is not None:
        return [np.asarray(c, dtype=np.float64) for c in codewords], "explicit"
    if tokenizer is not None:
        d = None if X is None else np.asarray(X).shape[1]
        cbs = tokenizer_codebooks(tokenizer, codes, d)
        if cbs is not None and codebooks_match_decode(tokenizer, cbs, codes):
            return cbs, "tokenizer"
    if X is not None:
        return data_codewords(codes, np.asarray(X)), "data"
    return None, None
