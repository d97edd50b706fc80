"""Reconstruction fidelity after each level, and the codewords of every level.

Per level ``l`` (reconstruction from the first ``l`` tokens, ``x_hat_l``):

* ``rel_mse = sum_i ||x_i - x_hat_l,i||^2 / sum_i ||x_i||^2``
* ``mse = mean_i ||x_i - x_hat_l,i||^2 / d`` (per coordinate)
* ``cosine = mean_i cos(x_i, x_hat_l,i)`` (0 where ``x_hat`` is 0)

Sources, best first: explicit per-level ``reconstructions``; a tokenizer's
``codebooks_`` (residual sums ``sum_{m<=l} e^m_{c_m}``, used only when the full sum
matches ``tokenizer.decode``); ``tokenizer.decode`` of the SID prefixes (PAD beyond
depth ``l``; levels a tokenizer cannot decode from a prefix are ``None``, the full SID
always works).  Independent of
any tokenizer, ``prefix_mean`` reconstructs an item by the mean embedding of the
items sharing its depth-``l`` prefix (the best any decoder can do from the prefix
in the squared-error sense), which makes tokenizers comparable.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from ..types import PAD, Codes

CHUNK = 65536


def _subset(codes: Codes, rows: slice | np.ndarray) -> Codes:
    return codes.replace(codes=codes.codes[rows], lengths=codes.lengths[rows], item_ids=None)


def _accumulate(X: np.ndarray, Xh: np.ndarray, acc: np.ndarray) -> None:
    """acc += [sum err^2, sum cos] (row reductions in float32, sums in float64)."""
    X = np.asarray(X, dtype=np.float32)
    Xh = np.asarray(Xh, dtype=np.float32)
    diff = X - Xh
    acc[0] += float(np.einsum("ij,ij->i", diff, diff).sum(dtype=np.float64))
    nx = np.sqrt(np.einsum("ij,ij->i", X, X).astype(np.float64))
    nh = np.sqrt(np.einsum("ij,ij->i", Xh, Xh).astype(np.float64))
    dot = np.einsum("ij,ij->i", X, Xh).astype(np.float64)
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


def group_sums(inv: np.ndarray, n_groups: int, X: np.ndarray,
               weights: np.ndarray | None = None, rows: np.ndarray | None = None) -> np.ndarray:
    """(G, d) float64 sums of (weighted) rows of X per group id ``inv``.

    One sparse (G x N) @ X product (no copy of X, no per-chunk dense output);
    ``rows`` restricts the sum to those item rows (``inv`` then has one entry per row).
    """
    n = X.shape[0]
    cols = np.arange(n) if rows is None else np.asarray(rows)
    data = np.ones(cols.size, dtype=np.float32) if weights is None else np.asarray(weights, np.float32)
    M = sp.csr_matrix((data, (np.asarray(inv), cols)), shape=(n_groups, n))
    Xa = np.asarray(X)
    if Xa.dtype not in (np.float32, np.float64):
        Xa = Xa.astype(np.float32)
    return np.asarray(M @ Xa, dtype=np.float64)


def _prefix_means(codes: Codes, X: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inv, means, counts): group id of every item and mean embedding per depth-prefix."""
    _, inv = np.unique(codes.prefix_keys(depth), return_inverse=True)
    inv = inv.reshape(-1)
    g = int(inv.max()) + 1 if inv.size else 0
    counts = np.bincount(inv, minlength=g)
    means = group_sums(inv, g, X) / np.maximum(counts, 1)[:, None]
    return inv, means, counts


def _row_sq_norms(X: np.ndarray) -> np.ndarray:
    out = np.empty(X.shape[0], dtype=np.float64)
    for s in range(0, X.shape[0], CHUNK):
        x = np.asarray(X[s:s + CHUNK], dtype=np.float32)
        out[s:s + CHUNK] = np.einsum("ij,ij->i", x, x)
    return out


def prefix_mean_fidelity(codes: Codes, X: np.ndarray) -> list[dict[str, Any]]:
    """Fidelity of the prefix-mean reconstruction after every level.

    Uses ``sum_{i in g} ||x_i - m_g||^2 = sum_{i in g} ||x_i||^2 - n_g ||m_g||^2`` and
    ``sum_{i in g} cos(x_i, m_g) = m_g . (sum_{i in g} x_i / ||x_i||) / ||m_g||``, so each
    level costs two sparse products over the items of non-singleton groups
    (a singleton group reconstructs its item exactly).
    """
    X = np.asarray(X)
    n, d = X.shape
    nx2 = _row_sq_norms(X)
    sq = float(nx2.sum())
    nx = np.sqrt(nx2)
    inv_nx = np.where(nx > 0, 1.0 / np.where(nx > 0, nx, 1.0), 0.0)
    out = []
    for l in range(codes.n_levels):
        _, inv, counts = np.unique(codes.prefix_keys(l + 1), return_inverse=True, return_counts=True)
        inv = inv.reshape(-1)
        multi = counts[inv] > 1
        rows = np.flatnonzero(multi)
        gid = np.flatnonzero(counts > 1)
        relabel = np.full(counts.size, -1, dtype=np.int64)
        relabel[gid] = np.arange(gid.size)
        sub_inv = relabel[inv[rows]]
        S = group_sums(sub_inv, gid.size, X, rows=rows)
        T = group_sums(sub_inv, gid.size, X, weights=inv_nx[rows], rows=rows)
        ng = counts[gid].astype(np.float64)
        m = S / ng[:, None]
        err = max(float(nx2[rows].sum() - (ng * np.einsum("ij,ij->i", m, m)).sum()), 0.0)
        mn = np.sqrt(np.einsum("ij,ij->i", m, m))
        cos = float(np.where(mn > 0, np.einsum("ij,ij->i", m, T) / np.where(mn > 0, mn, 1.0), 0.0).sum())
        cos += float((nx[~multi] > 0).sum())  # singletons: x_hat = x
        out.append({
            "level": l + 1,
            "rel_mse": err / sq if sq > 0 else float("nan"),
            "mse": err / (n * d),
            "cosine": cos / n,
        })
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
    xh = np.zeros((c.shape[0], levels[0].shape[1]), dtype=np.float32)
    out = []
    for l, cb in enumerate(levels):
        ext = np.vstack([np.asarray(cb, dtype=np.float32), np.zeros((1, cb.shape[1]), np.float32)])
        tok = c[:, l]
        xh = xh + ext[np.where(tok >= 0, tok, ext.shape[0] - 1)]  # PAD -> zero row
        out.append(xh)
    return out


def truncate(codes: Codes, depth: int) -> Codes:
    """The SID prefixes of length ``depth`` (PAD beyond), as a Codes of the same width."""
    lengths = np.minimum(codes.lengths, depth)
    return codes.replace(codes=codes.codes, lengths=lengths)


def _decode(tokenizer: Any, codes: Codes, rows: slice) -> np.ndarray:
    sub = _subset(codes, rows)
    width = len(getattr(tokenizer, "codebook_sizes_", ())) or sub.n_levels
    if width > sub.n_levels:
        # semantic-only codes (e.g. GAOQ without its enumerating last level): pad with
        # PAD so the tokenizer decodes the prefix (its deepest centroid)
        pad = np.full((sub.n_items, width - sub.n_levels), PAD, dtype=np.int64)
        sizes = tuple(sub.codebook_sizes) + tuple(int(k) for k in tokenizer.codebook_sizes_[sub.n_levels:])
        sub = sub.replace(codes=np.concatenate([sub.codes, pad], 1), codebook_sizes=sizes)
    return np.asarray(tokenizer.decode(sub), dtype=np.float64)


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
            for depth in range(L, 0, -1):
                trunc = codes if depth == L else truncate(codes, depth)
                acc = np.zeros(2)
                try:
                    for s in range(0, n, CHUNK):
                        rows = slice(s, s + CHUNK)
                        _accumulate(np.asarray(X[rows]), _decode(tokenizer, trunc, rows), acc)
                except Exception:
                    if depth == L:
                        raise
                    break  # this tokenizer cannot decode a SID prefix: last level only
                levels[depth - 1] = _finish(acc, sq, n, d, depth)
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
        if l + 1 < codes.n_levels:
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
